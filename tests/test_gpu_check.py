"""benchmarks/gpu_check.py keeps working before a GPU runs it: tiny sizes on the CPU, non-zero exit on failure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def gpu_check():
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_tiny_run_passes_every_stage_on_the_cpu(gpu_check, tmp_path, capsys):
    # the shard stage is `accelerate launch` of `zscir index`, tested in test_shards.py
    assert gpu_check.main(["--tiny", "--device", "cpu", "--skip", "shard", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("evaluate", "lincir", "rtd", "cig"):
        assert f'"stage": "{stage}"' in out
    assert "bf16_vs_fp32_cos_mean" in out and "gpu_check passed; 4 stages" in out


def test_a_failing_stage_makes_the_exit_code_non_zero(gpu_check, tmp_path, monkeypatch, capsys):
    import zscir.training.rtd

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(zscir.training.rtd, "train_rtd", broken)
    argv = ["--tiny", "--device", "cpu", "--skip", "evaluate", "lincir", "cig", "shard", "--workdir", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    assert "FAIL rtd: RuntimeError: CUDA error" in capsys.readouterr().out
