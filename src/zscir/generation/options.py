"""Options of CIG generation, kept free of torch/diffusers imports so `zscir --help` stays light."""

from __future__ import annotations

from dataclasses import dataclass

from zscir.errors import ZscirError

SEED_POLICIES = ("per-query", "shared")
# --scheduler name -> diffusers class (all take the SDXL folder's scheduler config).
SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}


@dataclass
class GenerationConfig:
    """Generation options; defaults are the paper's except the seed policy.

    Attributes:
        steps: denoising steps (50).
        guidance: classifier-free guidance scale (5.0) against all-zero negative embeddings.
        height, width: image size (512).
        batch_size: images per pipeline call.
        seed: base seed (1600).
        seed_policy: "per-query" (seed derived from base seed and query id) or "shared" (the paper:
            the same seed, hence the same initial noise, for every query).
        dark_threshold: reject an image whose mean pixel value (0–255) is ≤ this (10).
        max_retries: re-renders of a rejected image, with seed+1, seed+2, ... (5).
    """

    steps: int = 50
    guidance: float = 5.0
    height: int = 512
    width: int = 512
    batch_size: int = 4
    seed: int = 1600
    seed_policy: str = "per-query"
    dark_threshold: float = 10.0
    max_retries: int = 5

    def __post_init__(self):
        if self.seed_policy not in SEED_POLICIES:
            raise ZscirError(f"seed policy {self.seed_policy!r}: expected one of {', '.join(SEED_POLICIES)}")
        if self.steps < 1 or self.batch_size < 1 or self.max_retries < 0:
            raise ZscirError("steps and batch size must be ≥ 1 and max_retries ≥ 0")
        if self.height % 8 or self.width % 8:
            raise ZscirError(f"image size {self.height}×{self.width}: both sides must be multiples of 8")
