"""The training loop: DDP sync, accumulation, resume, NaN stop, best-by-validation, config loading.

A toy regression task keeps every run to a fraction of a second; the two-process test launches this
file itself under torchrun (gloo on the CPU), which accelerate reads like `accelerate launch`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zscir.errors import ZscirError
from zscir.training.config import TrainConfig, load_config, parse_overrides
from zscir.training.loop import IndexSampler, TrainingDiverged, TrainTask, list_checkpoints, train


class ToyTask(TrainTask):
    """Linear regression on fixed data; optional input noise (uses the RNG) and a NaN at a chosen call."""

    def __init__(self, n=48, dim=5, noise=0.0, nan_at_call=None, bypass_ddp=False, validate=False):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.noise, self.nan_at_call, self.bypass_ddp, self._validate = noise, nan_at_call, bypass_ddp, validate
        self.calls = 0
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        torch.manual_seed(7)
        for p in self.net.parameters():
            torch.nn.init.normal_(p, std=0.3)

    def model(self):
        return self.net

    def num_examples(self):
        return len(self.x)

    def batch(self, indices, device):
        return self.x[indices].to(device), self.y[indices].to(device)

    def loss(self, model, batch):
        self.calls += 1
        self.autocast = torch.is_autocast_enabled("cpu")
        x, y = batch
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        net = model.module if (self.bypass_ddp and hasattr(model, "module")) else model  # the RTD defect, on purpose
        loss = torch.nn.functional.mse_loss(net(x), y)
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return loss

    def can_validate(self):
        return self._validate

    def validate(self, model):
        # a metric that is best at step 2 of the run below: |loss - fixed value| is not monotone
        loss = torch.nn.functional.mse_loss(model(self.x), self.y).item()
        return {"neg_loss": -loss, "torch_rng_draw": torch.rand(1).item()}

    def save(self, model, folder):
        torch.save(model.state_dict(), folder / "weights.pt")


def _config(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), max_steps=4, batch_size=4, lr=0.05, weight_decay=0.0,
                checkpoint_every=100, report_to="none", progress=False, cpu=True, seed=3, select_metric="neg_loss")
    base.update(kw)
    return TrainConfig(**base)


def _weights(task):
    return torch.cat([p.detach().reshape(-1) for p in task.net.parameters()])


def test_sampler_shards_a_global_batch():
    one = IndexSampler(20, batch_size=4, world_size=1, seed=1)
    two = [IndexSampler(20, batch_size=2, world_size=2, rank=r, seed=1) for r in range(2)]
    for k in range(7):  # crosses epoch boundaries (2 global batches of 4... per epoch of 20 → 5)
        assert one.indices(k) == two[0].indices(k) + two[1].indices(k)
    epoch0 = sum((one.indices(k) for k in range(5)), [])
    assert sorted(epoch0) == list(range(20))


def test_accumulation_equals_one_large_batch(tmp_path):
    big = ToyTask()
    train(big, _config(tmp_path, "big", batch_size=8, max_steps=3))
    acc = ToyTask()
    train(acc, _config(tmp_path, "acc", batch_size=2, grad_accum=4, max_steps=3))
    no_acc = ToyTask()
    train(no_acc, _config(tmp_path, "noacc", batch_size=2, max_steps=3))
    assert torch.allclose(_weights(big), _weights(acc), atol=1e-6)
    assert not torch.allclose(_weights(big), _weights(no_acc), atol=1e-3)  # the comparison can fail


def test_resume_equals_uninterrupted(tmp_path):
    straight = ToyTask(noise=0.3)
    train(straight, _config(tmp_path, "straight", max_steps=6, checkpoint_every=3))
    first = ToyTask(noise=0.3)
    train(first, _config(tmp_path, "split", max_steps=3, checkpoint_every=3))
    with pytest.raises(Exception, match="resume"):
        train(ToyTask(noise=0.3), _config(tmp_path, "split", max_steps=6))
    resumed = ToyTask(noise=0.3)  # fresh init: everything must come from the checkpoint
    result = train(resumed, _config(tmp_path, "split", max_steps=6, checkpoint_every=3, resume=True))
    assert result.steps == 6
    assert torch.equal(_weights(straight), _weights(resumed))
    # without the restored RNG the noise differs, so the weights would differ: check the test can fail
    fresh = ToyTask(noise=0.3)
    train(fresh, _config(tmp_path, "other-seed", max_steps=6, seed=4))
    assert not torch.equal(_weights(straight), _weights(fresh))
    assert [s for s, _ in list_checkpoints(tmp_path / "split" / "checkpoints")] == [3, 6]
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert saved["max_steps"] == 6 and saved["task"] == "ToyTask"


def test_nan_loss_stops_with_step_and_names_the_last_verified_checkpoint(tmp_path):
    task = ToyTask(nan_at_call=5)
    with pytest.raises(TrainingDiverged, match=r"at step 5 .*last good checkpoint: \S*step-00000002") as info:
        train(task, _config(tmp_path, "nan", max_steps=8, checkpoint_every=2))
    assert info.value.step == 5 and info.value.checkpoint.name == "step-00000002"
    # the weights of step 4 gave the NaN: that checkpoint is kept, marked, and skipped by a resume
    ckpts = tmp_path / "nan" / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [2]
    assert [s for s, _ in list_checkpoints(ckpts, include_diverged=True)] == [2, 4]
    assert not (tmp_path / "nan" / "final").exists()
    clean = ToyTask()
    train(clean, _config(tmp_path, "clean", max_steps=4))
    assert torch.equal(_weights(task), _weights(clean))  # the NaN step did not touch the weights


class ExplodingTask(ToyTask):
    """A deep linear net with a huge learning rate: the loss stays finite for a few steps, then overflows."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(*[torch.nn.Linear(5, 5) for _ in range(4)], torch.nn.Linear(5, 1))
        torch.manual_seed(7)
        for p in self.net.parameters():
            torch.nn.init.normal_(p, std=0.5)


def _safetensors_weights(folder):
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in state.items()}


def test_nan_stop_with_checkpoint_every_1_names_weights_that_gave_a_finite_loss(tmp_path):
    # lr 5e3: the loss is 13 at step 1, 5e37 at step 2 (weights ~5e3), inf at step 3
    config = _config(tmp_path, "boom", max_steps=10, checkpoint_every=1, keep_checkpoints=1, lr=5e3)
    task = ExplodingTask()
    with pytest.raises(TrainingDiverged) as info:
        train(task, config)
    good, bad_step = info.value.checkpoint, info.value.step
    assert good is not None and bad_step > 2
    sampler = IndexSampler(task.num_examples(), config.batch_size, seed=config.seed)

    def loss_of(folder, micro_step):  # the loss those weights give on the batch the loop used next
        net = ExplodingTask().net
        net.load_state_dict(_safetensors_weights(folder))
        x, y = task.batch(sampler.indices(micro_step), "cpu")
        with torch.no_grad():
            return torch.nn.functional.mse_loss(net(x), y)

    good_step = int(good.name.split("-")[1])
    assert all(torch.isfinite(v).all() for v in _safetensors_weights(good).values())
    assert torch.isfinite(loss_of(good, good_step))
    # the checkpoint after it holds the weights that gave the non-finite loss: kept but marked
    diverged = [p for s, p in list_checkpoints(good.parent, include_diverged=True) if s > good_step]
    assert diverged and all((p / "diverged.json").is_file() for p in diverged)
    assert not torch.isfinite(loss_of(diverged[-1], bad_step - 1))
    # an uninterrupted run of good_step steps holds exactly the named weights
    short = ExplodingTask()
    train(short, _config(tmp_path, "short", max_steps=good_step, lr=5e3))
    named = ExplodingTask()
    named.net.load_state_dict(_safetensors_weights(good))
    assert torch.equal(_weights(short), _weights(named))


def test_planted_pickle_in_a_checkpoint_is_refused_and_never_loaded(tmp_path):
    train(ToyTask(), _config(tmp_path, "run", max_steps=2, checkpoint_every=2))
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1]
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        torch.save(Exploit(), ckpt / name)
        with pytest.raises(ZscirError, match=f"{name}: unexpected file in a checkpoint"):
            train(ToyTask(), _config(tmp_path, "run", max_steps=4, checkpoint_every=2, resume=True))
        assert not marker.exists()
        (ckpt / name).unlink()
    # the checkpoint itself holds JSON and safetensors only, and resumes once the planted file is gone
    assert {p.suffix for p in ckpt.iterdir()} <= {".json", ".safetensors"}
    assert train(ToyTask(), _config(tmp_path, "run", max_steps=4, checkpoint_every=2, resume=True)).steps == 4


def test_resume_refuses_a_changed_config_unless_allowed_and_records_what_was_used(tmp_path):
    train(ToyTask(), _config(tmp_path, "run", max_steps=2, checkpoint_every=2, lr=0.05))
    with pytest.raises(ZscirError, match=r"lr \(checkpoint 0.05, now 0.5\)"):
        train(ToyTask(), _config(tmp_path, "run", max_steps=4, resume=True, lr=0.5))
    # bookkeeping fields may change freely (max_steps, checkpoint_every)
    changed = ToyTask()
    train(changed, _config(tmp_path, "run", max_steps=4, checkpoint_every=1, resume=True, lr=0.5,
                           allow_config_change=True))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 0.5
    assert saved["config_changes"] == [{"at_step": 2, "lr": {"was": 0.05, "now": 0.5},
                                        "checkpoint_every": {"was": 2, "now": 1}, "max_steps": {"was": 2, "now": 4}}]
    # the new lr really took effect: 2 steps at 0.05 then 2 at 0.5 differ from 4 steps at 0.05
    same = ToyTask()
    train(same, _config(tmp_path, "same", max_steps=4, lr=0.05))
    assert not torch.allclose(_weights(changed), _weights(same), atol=1e-4)
    # and equal a run whose optimiser lr is switched by hand after 2 steps (the definition)
    assert_lr_switch_matches(changed)


def test_resume_with_another_number_of_processes_names_the_cause(tmp_path):
    from types import SimpleNamespace

    from zscir.training.checkpoint import load_training_state

    train(ToyTask(), _config(tmp_path, "run", max_steps=2, checkpoint_every=2))
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1]
    task = ToyTask()
    for rank in (0, 1):  # rank 1 has no RNG file of its own; rank 0 would silently load the others' half
        two = SimpleNamespace(process_index=rank, num_processes=2)
        with pytest.raises(ZscirError, match=r"saved by a run of 1 process\(es\), this run has 2 .*with 1 process"):
            load_training_state(two, task.net, None, None, ckpt)


def assert_lr_switch_matches(changed):
    """2 steps at lr 0.05, then 2 steps at 0.5 from the same optimiser state, written without the loop's resume."""
    task = ToyTask()
    torch.manual_seed(3)  # the loop's set_seed(seed + rank) for a fresh run
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(3)
    net = task.net
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.0)
    sampler = IndexSampler(task.num_examples(), 4, seed=3)
    for k in range(4):
        if k == 2:
            for group in opt.param_groups:
                group["lr"] = 0.5
        loss = task.loss(net, task.batch(sampler.indices(k), "cpu"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert torch.allclose(_weights(task), _weights(changed), atol=1e-6)


def test_rerunning_a_finished_run_writes_its_real_last_loss(tmp_path):
    first = train(ToyTask(), _config(tmp_path, "done", max_steps=3, checkpoint_every=3))
    metrics_path = tmp_path / "done" / "final" / "metrics.json"
    before = json.loads(metrics_path.read_text())
    again = train(ToyTask(), _config(tmp_path, "done", max_steps=3, checkpoint_every=3, resume=True))
    text = metrics_path.read_text()
    assert "NaN" not in text and json.loads(text) == before == {"step": 3, "loss": first.last_loss}
    assert again.steps == 3 and again.last_loss == first.last_loss


def test_best_by_validation_and_validation_does_not_change_training(tmp_path):
    validated = ToyTask(noise=0.3, validate=True)
    result = train(validated, _config(tmp_path, "val", max_steps=6, validate_every=2, lr=0.5))
    plain = ToyTask(noise=0.3)
    train(plain, _config(tmp_path, "noval", max_steps=6, lr=0.5))
    assert torch.equal(_weights(validated), _weights(plain))  # validation's RNG draw was forked away
    assert [h["step"] for h in result.history] == [2, 4, 6]
    best = max(result.history, key=lambda h: h["neg_loss"])
    assert result.best_metrics["step"] == best["step"]
    assert json.loads((result.best_dir / "metrics.json").read_text())["step"] == best["step"]
    assert (result.final_dir / "weights.pt").is_file()


def test_bf16_autocast_covers_the_loss_on_cpu(tmp_path):
    task = ToyTask()
    train(task, _config(tmp_path, "bf16", max_steps=1, mixed_precision="bf16"))
    assert task.autocast
    plain = ToyTask()
    train(plain, _config(tmp_path, "fp32", max_steps=1))
    assert not plain.autocast
    with pytest.raises(Exception, match="fp16 needs a GPU"):
        train(ToyTask(), _config(tmp_path, "fp16", max_steps=1, mixed_precision="fp16"))


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nbatch_size: 16\nbetas: [0.9, 0.98]\n")
    config = load_config(TrainConfig, path, parse_overrides(["batch-size=8", "max_grad_norm=none"]))
    assert (config.lr, config.batch_size, config.betas, config.max_grad_norm) == (0.001, 8, (0.9, 0.98), None)
    with pytest.raises(Exception, match="unknown field"):
        load_config(TrainConfig, None, {"learning_rate": 1})
    with pytest.raises(Exception, match="mixed_precision"):
        load_config(TrainConfig, None, {"mixed_precision": "fp8"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_synchronise_gradients(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    synced = [torch.load(tmp_path / f"sync-rank{r}.pt") for r in range(2)]
    unsynced = [torch.load(tmp_path / f"nosync-rank{r}.pt") for r in range(2)]
    assert torch.equal(synced[0], synced[1])
    assert not torch.allclose(unsynced[0], unsynced[1], atol=1e-4)  # without DDP's all-reduce replicas drift
    # DDP averages the two shards' gradients: one process with the whole global batch does the same
    single = ToyTask()
    train(single, _config(tmp_path, "single", batch_size=8, max_steps=3))
    assert torch.allclose(synced[0], _weights(single), atol=1e-5)
    assert not torch.allclose(unsynced[0], _weights(single), atol=1e-4)


def _worker(folder: str) -> None:
    """Run under torchrun: a synchronised and a deliberately unsynchronised run; save each rank's weights."""
    import os

    rank = int(os.environ["RANK"])
    out = Path(folder)
    for name, bypass in (("sync", False), ("nosync", True)):
        task = ToyTask(bypass_ddp=bypass)
        train(task, _config(out, f"run-{name}", batch_size=4, max_steps=3))
        torch.save(_weights(task), out / f"{name}-rank{rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(sys.argv[1])


# ---------------------------------------------------------------------------------------------
# LR schedules (transformers' get_scheduler) and trackers (accelerate)


def _expected_lr(name: str, step: int, base: float, warmup: int, total: int) -> float:
    """The LR of optimiser step `step` (0-based), written from each schedule's definition."""
    import math

    if name == "constant":
        return base
    if step < warmup:
        return base * step / warmup
    if name == "constant_with_warmup":
        return base
    progress = (step - warmup) / (total - warmup)
    if name == "linear":
        return base * (1 - progress)
    return base * 0.5 * (1 + math.cos(math.pi * progress))  # cosine, half a period


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "cosine", "linear"])
def test_lr_schedules_follow_their_definitions(name, tmp_path):
    from zscir.training.loop import make_scheduler

    warmup = 0 if name == "constant" else 3
    config = _config(tmp_path, name, lr=0.1, max_steps=10, warmup_steps=warmup, lr_scheduler=name)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, config)
    got = []
    for _ in range(config.max_steps):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [_expected_lr(name, s, 0.1, warmup, 10) for s in range(10)]
    assert got == pytest.approx(expected, abs=1e-12)
    if name != "constant":
        assert len(set(got)) > 1  # the schedule really moves


def test_constant_schedule_with_warmup_steps_is_refused(tmp_path):
    from zscir.errors import ZscirError

    with pytest.raises(ZscirError, match="constant_with_warmup"):
        _config(tmp_path, "c", warmup_steps=2, lr_scheduler="constant").check()


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_the_loop_reports_loss_lr_and_validation_to_tensorboard(tmp_path):
    config = _config(tmp_path, "tb", max_steps=4, log_every=1, warmup_steps=2, lr_scheduler="linear",
                     report_to="tensorboard", validate_every=2)
    train(ToyTask(validate=True), config)
    scalars = _scalars(tmp_path / "tb" / "logs")
    lrs = sorted(scalars["train/lr"])
    assert [s for s, _ in lrs] == [1, 2, 3, 4]
    assert [v for _, v in lrs] == pytest.approx([_expected_lr("linear", s, 0.05, 2, 4) for s in range(4)])
    assert len(scalars["train/loss"]) == 4 and sorted(s for s, _ in scalars["val/neg_loss"]) == [2, 4]
    # report_to none writes no logs at all
    train(ToyTask(), _config(tmp_path, "quiet", max_steps=2, report_to="none"))
    assert not (tmp_path / "quiet" / "logs").exists()


def test_a_tracker_that_is_not_installed_is_named(tmp_path):
    from accelerate.utils import is_wandb_available

    from zscir.errors import ZscirError
    from zscir.training.loop import trackers_for

    if is_wandb_available():
        pytest.skip("wandb is installed here")
    with pytest.raises(ZscirError, match="wandb package is not installed"):
        trackers_for("wandb")
    assert trackers_for("none") == []
    assert "tensorboard" in trackers_for("all")
