"""The ONE training loop of zscir, on `accelerate`: LinCIR, RTD, the CIG generator and Phi distillation run on it.

A trainer describes its work as a `TrainTask` (the module to train, how to make a batch from example
indices, the loss, optional validation and how to save); `train(task, config)` does the rest:

- one process on CPU/GPU, or `accelerate launch` / `torchrun` on many with real DDP: the task's loss
  calls the *prepared* model (the DDP wrapper), so gradients are all-reduced (never `.module` in the
  forward, the defect of the public RTD code);
- gradient accumulation through `accelerator.accumulate` (gradients sync only on the last
  micro-batch; the loss is divided by the number of micro-batches by `accelerator.backward`);
- mixed precision: `accelerator.autocast()` covers the whole loss, i.e. the trained model's forward
  AND the frozen parts around it (fp16/bf16 on GPU, bf16 autocast on CPU);
- a deterministic, resumable data order: micro-batch k of the run is a pure function of (seed, k),
  so the data position is just the micro-batch counter stored in the checkpoint;
- checkpoints every N steps with model, optimiser, scheduler, grad scaler, step, data position and
  the RNG states of every process, as JSON + safetensors only (`zscir.training.checkpoint`; never
  accelerate's pickles), into a temp folder, then a rename; `resume=True` continues from the last one:
  N steps + resume + N steps == 2N uninterrupted steps. A folder holding any other file is refused;
  a resume whose config differs from the checkpoint's in a field that shapes the weights is refused
  unless `allow_config_change` is set, and then the new values really take effect (optimiser
  hyper-parameters included) and `config.json` records each change with its step;
- validation every K steps on the main process (RNG forked, so it never changes training), the best
  model by `select_metric` kept in `output_dir/best`;
- scalars to accelerate trackers (`report_to`: TensorBoard, W&B, MLflow), LR schedules from transformers'
  `get_scheduler`, a tqdm bar, the resolved config in `output_dir/config.json`;
- a NaN/inf loss stops the run before the update, naming the step and the last good checkpoint: the
  newest one whose weights then gave a finite loss (the checkpoint of the weights that produced the
  NaN is marked diverged, kept for inspection, and skipped by a resume). Non-finite weights stop the
  run before they are checkpointed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zscir.errors import DataError, ZscirError, require
from zscir.retrieval.shards import tear_down_process_group_at_exit
from zscir.training.checkpoint import load_training_state, save_training_state
from zscir.training.config import TrainConfig
from zscir.utils.io import apply_umask_modes, read_json, remove_stale_temps, write_json_atomic

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
DIVERGED_FILE = "diverged.json"
# Config fields a resume may change freely: they shape bookkeeping, not the trained weights.
RESUME_FREE_FIELDS = frozenset({
    "output_dir", "max_steps", "resume", "allow_config_change", "progress", "report_to", "log_every",
    "checkpoint_every", "keep_checkpoints", "validate_every", "cache_dir", "encode_batch_size",
})
NOT_RECORDED = frozenset({"resume", "allow_config_change", "progress"})  # how a run was invoked, not what it used


class TrainingDiverged(ZscirError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class TrainTask:
    """What a trainer supplies to `train`. Subclass and override.

    The loop calls, in order: `setup(accelerator)` once, `model()` once (the module to train; the
    loop prepares it), then per micro-batch `batch(indices, device)` and `loss(model, batch)`,
    `validate(model)` every `validate_every` steps, `save(model, folder)` for the best/final model.
    """

    def setup(self, accelerator) -> None:
        """Move frozen parts to `accelerator.device`, build caches (called once, on every process)."""

    def model(self) -> torch.nn.Module:
        """The trainable module (wrap several in one module whose `forward` runs them all)."""
        raise NotImplementedError

    def num_examples(self) -> int:
        """Size of the training set (example indices are 0..n-1)."""
        raise NotImplementedError

    def batch(self, indices: list[int], device: torch.device) -> Any:
        """The micro-batch holding these examples, on `device`."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Scalar loss (mean over the micro-batch). `model` is the prepared wrapper: call it, never `.module`."""
        raise NotImplementedError

    def can_validate(self) -> bool:
        """True if `validate` returns metrics."""
        return False

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics of the current model (unwrapped, eval mode, no grad); must include `config.select_metric`."""
        raise NotImplementedError

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Write the trained model (unwrapped) into `folder` in its reloadable format."""
        raise NotImplementedError


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        steps: optimiser steps reached.
        last_loss: mean loss of the last step.
        final_dir: `output_dir/final` (the model after the last step).
        best_dir: `output_dir/best` if validation ran, else None.
        best_metrics: metrics of the best validation (with "step"), else None.
        history: every validation's metrics with its "step".
    """

    steps: int
    last_loss: float
    final_dir: Path
    best_dir: Path | None = None
    best_metrics: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class IndexSampler:
    """Deterministic, resumable example order: micro-batch k is a function of (seed, k) alone.

    Each epoch is a fresh permutation (seeded by seed and the epoch); a global micro-batch takes the
    next `batch_size × world_size` indices of it (the tail that does not fill one is dropped) and
    process r takes its r-th slice. The same global batch split over 2 processes therefore holds
    exactly the examples one process would take with a batch twice as large.
    """

    def __init__(self, num_examples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.global_batch = batch_size * world_size
        if num_examples < self.global_batch:
            raise DataError(
                f"{num_examples} training examples do not fill one global batch of {self.global_batch} "
                f"({batch_size} per process × {world_size} processes): lower batch_size"
            )
        self.num_examples, self.batch_size, self.rank, self.seed = num_examples, batch_size, rank, seed
        self.per_epoch = num_examples // self.global_batch
        self._epoch, self._perm = -1, None

    def indices(self, micro_step: int) -> list[int]:
        """This process's example indices for global micro-batch `micro_step`."""
        epoch, position = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.num_examples, generator=generator), epoch
        start = position * self.global_batch + self.rank * self.batch_size
        return self._perm[start : start + self.batch_size].tolist()


class SkipCounter:
    """Counts bad input records (empty / malformed lines), keeps a few examples, fails above a threshold.

    Args:
        what: e.g. "captions.txt" (used in messages).
        max_bad_fraction: `finish` raises DataError when more than this fraction of records was bad.
    """

    def __init__(self, what: str, max_bad_fraction: float = 0.1):
        self.what, self.max_bad_fraction = what, max_bad_fraction
        self.total, self.bad = 0, 0
        self.examples: list[str] = []

    def good(self) -> None:
        """Record one usable record."""
        self.total += 1

    def skip(self, where: str, why: str) -> None:
        """Record one skipped record (`where`: e.g. "line 12")."""
        self.total += 1
        self.bad += 1
        if len(self.examples) < 3:
            self.examples.append(f"{where}: {why}")

    def finish(self) -> str:
        """One summary line; raises DataError if nothing is usable or too much was bad."""
        summary = f"{self.what}: {self.total - self.bad} records used, {self.bad} skipped"
        if self.bad:
            summary += " (e.g. " + "; ".join(self.examples) + ")"
        if self.total == self.bad:
            raise DataError(f"{self.what}: no usable records ({summary})")
        if self.bad > self.max_bad_fraction * self.total:
            raise DataError(f"{summary}: more than {self.max_bad_fraction:.0%} bad, refusing to train on it")
        return summary


# ---------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(folder: Path, include_diverged: bool = False) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first.

    Temp folders are ignored, and so are checkpoints marked diverged (their weights gave a NaN/inf loss)
    unless `include_diverged`.
    """
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()
             and (include_diverged or not (p / DIVERGED_FILE).exists())]
    return sorted(found)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final` (an older `final` is moved aside first, then deleted).

    Its files get the umask's mode first (safetensors and `save_pretrained` write 0600 files).
    """
    apply_umask_modes(tmp)
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _save_checkpoint(accelerator, root: Path, state: dict, keep: int, training: tuple) -> Path:
    """Write checkpoint `step-{state['step']}`; keep the newest `keep` plus the newest verified one.

    `training` = (model, optimizer, scheduler). A checkpoint is verified once its weights gave a finite
    loss (`state["good_checkpoint"]`, the step of the newest such one): it is never deleted in favour
    of unverified ones, so a NaN stop can always name a checkpoint that really was good.
    """
    name = f"step-{state['step']:08d}"
    tmp = root / f".tmp-{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_training_state(accelerator, *training, tmp)  # every process writes its RNG files; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        _replace_dir(tmp, root / name)
        good = state.get("good_checkpoint")
        for old_step, old in list_checkpoints(root, include_diverged=True)[:-keep]:
            if old_step != good:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return root / name


def _mark_diverged(root: Path, after_step: int | None, step: int) -> list[Path]:
    """Mark the checkpoints newer than the last good one as diverged (kept, skipped by resume)."""
    marked = []
    for s, path in list_checkpoints(root):
        if after_step is None or s > after_step:
            write_json_atomic(path / DIVERGED_FILE, {"non_finite_loss_at_step": step})
            marked.append(path)
    return marked


def _check_resume_config(saved: dict, current: dict, allow_change: bool, where: Path) -> dict[str, list]:
    """{field: [checkpoint value, new value]} of the fields a resume changes; refuse weight-shaping changes.

    Raises:
        ZscirError: a field outside RESUME_FREE_FIELDS differs and `allow_change` is False.
    """
    changed = {k: [saved.get(k), v] for k, v in current.items()
               if k in saved and saved[k] != v and k not in NOT_RECORDED}
    shaping = {k: v for k, v in changed.items() if k not in RESUME_FREE_FIELDS}
    if shaping and not allow_change:
        listed = ", ".join(f"{k} (checkpoint {old!r}, now {new!r})" for k, (old, new) in sorted(shaping.items()))
        raise ZscirError(f"{where}: the run being resumed was trained with another config: {listed}; resume with "
                         "the checkpoint's values, set allow_config_change to continue with the new ones, or "
                         "use another output folder")
    return changed


def _apply_config(optimizer, scheduler, config: TrainConfig) -> None:
    """Make the optimiser hyper-parameters of a resumed run those of `config` (they come back from the checkpoint)."""
    for group in optimizer.param_groups:
        group.update(weight_decay=config.weight_decay, betas=tuple(config.betas), eps=config.eps)
    scheduler.base_lrs = [config.lr for _ in scheduler.base_lrs]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, factor in zip(optimizer.param_groups, factors):
        group["lr"] = config.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _weights_finite(params) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in params)


def _save_model(accelerator, task: TrainTask, model, folder: Path, extra: dict | None = None) -> None:
    """Main process: task.save into a temp folder, then rename onto `folder`."""
    if accelerator.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if extra is not None:  # first, so that the task's save can describe the run (model cards)
            write_json_atomic(tmp / "metrics.json", extra)
        task.save(accelerator.unwrap_model(model), tmp)
        _replace_dir(tmp, folder)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# The loop


def _make_accelerator(config: TrainConfig, trackers: list[str]):
    accelerate = _require_accelerate()
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise ZscirError("mixed_precision=fp16 needs a GPU; use bf16 (CPU autocast) or no", setting="mixed_precision")
    tear_down_process_group_at_exit()
    return accelerate.Accelerator(
        cpu=config.cpu, mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        log_with=trackers or None, project_dir=config.output_dir,
    )


def trackers_for(report_to: str) -> list[str]:
    """The accelerate trackers `report_to` names (tensorboard, wandb, mlflow, all, none).

    Raises:
        ZscirError: an explicitly chosen tracker whose package is not installed (TensorBoard, the default,
            is skipped with a note instead).
    """
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available(),
                 "mlflow": is_mlflow_available()}
    if report_to == "none":
        return []
    if report_to == "all":
        return [name for name, ok in available.items() if ok]
    if available.get(report_to):
        return [report_to]
    if report_to == "tensorboard":
        print("note: tensorboard is not installed; no TensorBoard logs (pip install 'zscir[train]')")
        return []
    raise ZscirError(f"report_to {report_to}: the {report_to} package is not installed (pip install {report_to})",
                     setting="report_to")


def make_scheduler(optimizer, config: TrainConfig):
    """transformers' `get_scheduler(config.lr_scheduler)` over `max_steps` optimiser steps with `warmup_steps`."""
    from transformers import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=config.max_steps)


def _tracker_config(config: TrainConfig) -> dict:
    """The config as scalars for the trackers' hyper-parameter tables (lists and None as text)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}


def _require_accelerate():
    return require("accelerate", "train")


def _reset_accelerate_state() -> None:
    """Let a later `train` call in the same process pick other precision / accumulation settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)  # keeps the process group
    GradientState._reset_state()


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def train(task: TrainTask, config: TrainConfig) -> TrainResult:
    """Train `task.model()` under `config` (see the module docstring for what the loop guarantees).

    Args:
        task: the TrainTask.
        config: a TrainConfig (or subclass); written to `output_dir/config.json`.
    Returns:
        TrainResult (final model in `output_dir/final`, best in `output_dir/best` if validated).
    Raises:
        TrainingDiverged: NaN/inf loss (weights of that step not updated, no checkpoint written after it).
        ZscirError: existing checkpoints without `resume`, bad config.
    """
    _require_accelerate()  # one line naming the extra, before anything imports accelerate
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    config.check()
    out = Path(config.output_dir)
    ckpt_root = out / "checkpoints"
    existing = list_checkpoints(ckpt_root)
    if existing and not config.resume:
        raise ZscirError(f"{out} already holds checkpoints (last: step {existing[-1][0]}); resume it "
                         "or choose another output folder", setting="resume")
    trackers = trackers_for(config.report_to)
    accelerator = _make_accelerator(config, trackers)
    main = accelerator.is_main_process
    try:
        if main:  # leftovers of a killed run: half-written checkpoint / model folders and temp files
            for folder in (out, ckpt_root):
                remove_stale_temps(folder, temp_dirs=True)
        accelerator.wait_for_everyone()
        set_seed(config.seed)
        task.setup(accelerator)
        model = task.model()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ZscirError("the task's model has no trainable parameter")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                      betas=tuple(config.betas), eps=config.eps)
        scheduler = make_scheduler(optimizer, config)
        # The scheduler is stepped by hand once per optimiser step (a prepared one would step once per process).
        model, optimizer = accelerator.prepare(model, optimizer)
        training = (model, optimizer, scheduler)

        run_config = {"task": type(task).__name__, "num_processes": accelerator.num_processes, **config.to_dict()}
        state = {"step": 0, "micro_step": 0, "best": None, "history": [], "last_loss": None,
                 "good_checkpoint": None, "config": run_config, "config_changes": []}
        last_ckpt = None
        if config.resume and existing:
            last_ckpt = existing[-1][1]
            saved = read_json(last_ckpt / STATE_FILE)  # JSON: safe to read before the folder is checked
            changed = _check_resume_config(saved.get("config", {}), run_config, config.allow_config_change,
                                           last_ckpt)
            load_training_state(accelerator, *training, last_ckpt)  # model, optimiser, scheduler, scaler, RNG
            state.update({k: v for k, v in saved.items() if k != "config"})
            if changed:
                _apply_config(optimizer, scheduler, config)
                state["config_changes"] = [*state.get("config_changes", []), {"at_step": saved["step"], **{
                    k: {"was": old, "now": new} for k, (old, new) in sorted(changed.items())}}]
            state["config"] = run_config
            if main:
                print(f"resuming from {last_ckpt} (step {state['step']})")
        else:
            # Per-process noise streams differ (each process draws noise for its own examples).
            set_seed(config.seed + accelerator.process_index)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", {**run_config, "config_changes": state["config_changes"]})
        if trackers:
            accelerator.init_trackers("logs", config=_tracker_config(config))  # tensorboard: output_dir/logs
        sampler = IndexSampler(task.num_examples(), config.batch_size, accelerator.num_processes,
                               accelerator.process_index, config.seed)
        validate = task.can_validate()
        step, micro_step = state["step"], state["micro_step"]
        good_ckpt = (ckpt_root / f"step-{state['good_checkpoint']:08d}") if state["good_checkpoint"] is not None \
            else None
        bar = tqdm(total=config.max_steps, initial=step, desc=type(task).__name__,
                   disable=(not main or not config.progress) or None)
        while step < config.max_steps:
            loss_sum = torch.zeros((), device=accelerator.device)
            step_lr = scheduler.get_last_lr()[0]
            for _ in range(config.grad_accum):
                batch = task.batch(sampler.indices(micro_step), accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss = task.loss(model, batch)
                    finite = accelerator.gather(torch.isfinite(loss.detach()).reshape(1))
                    if not bool(finite.all()):
                        _stop_diverged(accelerator, ckpt_root, good_ckpt, step, f"loss is {loss.item()}",
                                       f" (micro-batch {micro_step}); stopped before updating the weights")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                loss_sum += loss.detach().float()
            if not accelerator.sync_gradients:
                raise RuntimeError("gradient accumulation out of step with the loop (no sync on the last micro-batch)")
            if last_ckpt is not None and int(CHECKPOINT_PATTERN.match(last_ckpt.name).group(1)) == step:
                good_ckpt = last_ckpt  # its weights just gave a finite loss on every micro-batch
            step += 1
            last_loss = accelerator.reduce(loss_sum / config.grad_accum, "mean").item()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4g}")
            if trackers and (step % config.log_every == 0 or step == config.max_steps):
                # the LR the step just used (the scheduler has moved on to the next step's)
                accelerator.log({"train/loss": last_loss, "train/lr": step_lr}, step=step)

            if validate and ((config.validate_every and step % config.validate_every == 0)
                             or step == config.max_steps):
                metrics = _validate(accelerator, task, model, config, step, state, out, bool(trackers))
                if main and metrics is not None:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            state.update(step=step, micro_step=micro_step, last_loss=last_loss,
                         good_checkpoint=None if good_ckpt is None else int(good_ckpt.name.split("-")[1]))
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                if not _weights_finite(params):
                    _stop_diverged(accelerator, ckpt_root, good_ckpt, step - 1, "the weights became non-finite",
                                   "; not checkpointed")
                last_ckpt = _save_checkpoint(accelerator, ckpt_root, state, config.keep_checkpoints, training)
        bar.close()
        # a rerun of a finished run trains no step: its loss is the one recorded with the last checkpoint
        _save_model(accelerator, task, model, out / "final", {"step": step, "loss": state["last_loss"]})
        best = state["best"]
        last_loss = float("nan") if state["last_loss"] is None else state["last_loss"]
        return TrainResult(step, last_loss, out / "final", out / "best" if best else None, best, state["history"])
    finally:
        if trackers:
            accelerator.end_training()
        accelerator.wait_for_everyone()
        accelerator.free_memory()
        _reset_accelerate_state()


def _stop_diverged(accelerator, ckpt_root: Path, good: Path | None, step: int, what: str, detail: str):
    """Mark the checkpoints after the last good one as diverged and raise TrainingDiverged naming it."""
    marked = []
    if accelerator.is_main_process:
        good_step = None if good is None else int(good.name.split("-")[1])
        marked = _mark_diverged(ckpt_root, good_step, step + 1)
    where = good if good is not None else "none (no checkpoint gave a finite loss yet)"
    note = f"; marked diverged (resume skips them): {', '.join(p.name for p in marked)}" if marked else ""
    raise TrainingDiverged(f"{what} at step {step + 1}{detail}; last good checkpoint: {where}{note}",
                           step + 1, good)


def _validate(accelerator, task, model, config, step, state, out, log: bool) -> dict | None:
    """Main process validates (RNG forked: training randomness is unchanged) and keeps the best model."""
    metrics = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            unwrapped.eval()
            try:
                metrics = {k: float(v) for k, v in task.validate(unwrapped).items()}
            finally:
                unwrapped.train()
        if config.select_metric not in metrics:
            raise ZscirError(f"validation returned {sorted(metrics)}, without select_metric {config.select_metric!r}")
        value = metrics[config.select_metric]
        if math.isnan(value):
            raise ZscirError(f"validation metric {config.select_metric} is NaN at step {step}")
        # a non-finite secondary metric is recorded as null: JSON has no NaN (the selection metric is finite)
        record = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        state["history"].append(record)
        if log:
            accelerator.log({f"val/{name}": v for name, v in metrics.items()}, step=step)
        best = state["best"]
        if _is_better(value, None if best is None else best[config.select_metric], config.select_mode):
            state["best"] = record
    # every process needs the same `best` to decide on saving; broadcast it from the main process
    from accelerate.utils import broadcast_object_list

    shared = broadcast_object_list([state["best"], state["history"]])
    state["best"], state["history"] = shared
    if state["best"] is not None and state["best"]["step"] == step:
        _save_model(accelerator, task, model, out / "best", state["best"])
    return metrics
