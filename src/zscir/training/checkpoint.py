"""Training checkpoints as JSON + safetensors only: nothing in a checkpoint folder is ever unpickled.

accelerate's `save_state` / `load_state` (1.15) write the optimiser, scheduler, scaler and RNG states as
pickles, and load registered objects (`custom_checkpoint_N.pkl`, the LR scheduler here) with
`weights_only=False`, i.e. a planted file runs code on resume. This module replaces both:

    step-NNNNNNNN/model.safetensors        the unwrapped model's state dict (shared tensors handled)
    step-NNNNNNNN/optimizer.safetensors    optimiser state tensors, keyed "{param index}.{name}"
    step-NNNNNNNN/optimizer.json           param groups + non-tensor per-parameter state
    step-NNNNNNNN/scheduler.json           the LR scheduler's state dict
    step-NNNNNNNN/scaler.json              the fp16 grad scaler's state dict (only with one)
    step-NNNNNNNN/rng-{rank}.safetensors   torch CPU / CUDA generator states of process `rank`
    step-NNNNNNNN/rng-{rank}.json          Python `random` and NumPy generator states, accelerate's step
    step-NNNNNNNN/trainer_state.json       written by the loop (step, data position, config, ...)

`check_checkpoint_files` refuses a folder holding anything else (a pickle could run code when loaded).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from zscir.errors import ZscirError
from zscir.utils.io import atomic_path, read_json, write_json_atomic

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
SAFE_SUFFIXES = (".json", ".safetensors")


class UnsafeCheckpointError(ZscirError):
    """A checkpoint folder holds a file that is not JSON or safetensors (e.g. a pickle); it is not loaded."""


def check_checkpoint_files(folder: Path) -> None:
    """Refuse a checkpoint folder that holds anything but zscir's JSON and safetensors files.

    Raises:
        UnsafeCheckpointError: names the first foreign file (a pickle such as accelerate's
            `custom_checkpoint_0.pkl` or `random_states_0.pkl` could run code when loaded).
    """
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        if not path.name.endswith(SAFE_SUFFIXES):
            raise UnsafeCheckpointError(
                f"{path}: unexpected file in a checkpoint; zscir checkpoints hold only JSON and safetensors "
                "(a pickle could run code when loaded), so this one is not resumed. Remove the file if you wrote "
                "it yourself, or start a new run (checkpoints of accelerate's save_state are not resumable)")


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        raise TypeError("tensor in a JSON part of the training state")
    return value


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, _json_safe(obj), indent=None)


# ---- optimiser ---------------------------------------------------------------------------------


def save_optimizer(optimizer, folder: Path) -> None:
    """Optimiser state: tensors into safetensors, everything else (param groups, scalars) into JSON."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    with atomic_path(folder / OPTIMIZER_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    _write_json(folder / OPTIMIZER_JSON, {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer, folder: Path) -> None:
    """Inverse of `save_optimizer` (tuples such as `betas` come back as tuples)."""
    from safetensors.torch import load_file

    meta = read_json(folder / OPTIMIZER_JSON)
    tensors = load_file(str(folder / OPTIMIZER_TENSORS))
    entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        entries.setdefault(int(index), {}).update(values)
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(meta["param_groups"]):
        raise ZscirError(f"{folder / OPTIMIZER_JSON}: {len(meta['param_groups'])} parameter groups, the optimiser "
                         f"has {len(current)}")
    groups = []
    for now, saved in zip(current, meta["param_groups"]):
        groups.append({k: (tuple(v) if isinstance(now.get(k), tuple) else v) for k, v in saved.items()})
    optimizer.load_state_dict({"state": entries, "param_groups": groups})


# ---- RNG ---------------------------------------------------------------------------------------


def save_rng(folder: Path, rank: int, accelerator_step: int) -> None:
    """This process's generator states (torch CPU + every CUDA device, Python, NumPy)."""
    import numpy as np
    from safetensors.torch import save_file

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    with atomic_path(folder / f"rng-{rank}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    _write_json(folder / f"rng-{rank}.json", {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "accelerator_step": accelerator_step,
    })


def load_rng(folder: Path, rank: int) -> int:
    """Restore this process's generator states; returns accelerate's saved micro-step counter."""
    import numpy as np
    from safetensors.torch import load_file

    tensors = load_file(str(folder / f"rng-{rank}.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    meta = read_json(folder / f"rng-{rank}.json")
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return int(meta.get("accelerator_step", 0))


# ---- everything --------------------------------------------------------------------------------


def save_training_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """Write the model, optimiser, scheduler, scaler (main process) and every process's RNG into `folder`.

    Every process calls this (each writes its own RNG files); `folder` must exist.
    """
    from safetensors.torch import save_model

    if accelerator.is_main_process:
        with atomic_path(folder / MODEL_FILE) as tmp:
            save_model(accelerator.unwrap_model(model), str(tmp))
        save_optimizer(optimizer, folder)
        _write_json(folder / SCHEDULER_FILE, scheduler.state_dict())
        if accelerator.scaler is not None:
            _write_json(folder / SCALER_FILE, accelerator.scaler.state_dict())
    save_rng(folder, accelerator.process_index, accelerator.step)


def check_process_count(folder: Path, rank: int, world: int) -> None:
    """Refuse a resume whose process count differs from the run that saved `folder` (one RNG file per process).

    Raises:
        ZscirError: names both counts and the launch option that resumes it.
    """
    saved = len(list(folder.glob("rng-*.json")))
    if saved and saved != world:
        raise ZscirError(f"{folder}: saved by a run of {saved} process(es), this run has {world} (rank {rank}): "
                         f"resume it with {saved} process(es) (the launcher's process count; 1 = no launcher), or "
                         "start a new output folder")


def load_training_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """Inverse of `save_training_state` on every process, after `check_checkpoint_files`.

    Raises:
        UnsafeCheckpointError: the folder holds a foreign (possibly pickled) file.
        ZscirError: another number of processes saved it, or a part is missing or damaged (the message
            names the file).
    """
    from safetensors.torch import load_model

    check_checkpoint_files(folder)
    check_process_count(folder, accelerator.process_index, accelerator.num_processes)
    try:
        load_model(accelerator.unwrap_model(model), str(folder / MODEL_FILE), strict=True,
                   device=str(accelerator.device))
        load_optimizer(optimizer, folder)
        scheduler.load_state_dict(read_json(folder / SCHEDULER_FILE))
        if accelerator.scaler is not None and (folder / SCALER_FILE).is_file():
            accelerator.scaler.load_state_dict(read_json(folder / SCALER_FILE))
        accelerator.step = load_rng(folder, accelerator.process_index)
    except ZscirError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ZscirError(f"{folder}: damaged or incomplete checkpoint ({type(exc).__name__}: {first})") from exc
