"""Recipe of `zscir train-generator` (torch-free, so the command's --help stays light)."""

from __future__ import annotations

from dataclasses import dataclass

from zscir.errors import ZscirError
from zscir.training.config import TrainConfig


@dataclass
class GeneratorTrainConfig(TrainConfig):
    """Recipe of `zscir train-generator` (loop knobs inherited from TrainConfig).

    Attributes:
        generator: SDXL pipeline folder or hub id whose UNet, VAE and scheduler config are used.
        template: the training prompt; "plain" = "a photo of $".
        resolution: square training size in pixels (resize shorter side + centre crop).
        uncond_prob: probability of training a sample on the all-zero conditioning (for guidance).
        encode_batch_size: images per VAE / tower forward when building the cache.
    """

    output_dir: str = "runs/generator"
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.01
    checkpoint_every: int = 250
    select_metric: str = "loss"
    select_mode: str = "min"
    generator: str = "stabilityai/stable-diffusion-xl-base-1.0"
    template: str = "plain"
    resolution: int = 512
    uncond_prob: float = 0.1
    encode_batch_size: int = 16

    def check(self) -> None:
        """TrainConfig's checks plus the recipe's."""
        super().check()
        if not 0.0 <= self.uncond_prob < 1.0:
            raise ZscirError(f"config: uncond_prob must be in [0, 1), got {self.uncond_prob}")
        if self.resolution % 8:
            raise ZscirError(f"config: resolution must be a multiple of 8, got {self.resolution}")
