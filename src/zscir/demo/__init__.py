"""`zscir demo`: the whole pipeline on the synthetic world, every stage cached and resumable."""
