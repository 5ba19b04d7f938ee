"""SEARLE's optimisation-based textual inversion (OTI), a test-time method: `optimise` inverts images
into pseudo tokens, `store` keeps them on disk and serves them as a retrieval method, `concepts` holds
the concept bank of its regularisers (shared with SEARLE's Phi distillation in `zscir.training.searle`)."""
