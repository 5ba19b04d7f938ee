"""Checking a user's `--device` before any model is loaded onto it."""

from __future__ import annotations

import torch

from zscir.errors import ZscirError


def check_device(device: str | torch.device) -> torch.device:
    """The torch device named by `device`, or a one-line ZscirError when this machine cannot use it.

    Args:
        device: "cpu", "cuda", "cuda:1", "mps", ... or a torch.device.
    Returns:
        The `torch.device`.
    Raises:
        ZscirError: an unknown device type, CUDA on a CPU-only torch / without a visible GPU, a GPU index out
            of range, or MPS where it is not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ZscirError(f"device {device!r} is not a device name (expected cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
            raise ZscirError(f"device {device!r} asked for, but {build}; use cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ZscirError(f"device {device!r} asked for, but only {count} GPU(s) are visible (cuda:0..{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ZscirError(f"device {device!r} asked for, but MPS is not available on this machine; use cpu")
    return dev
