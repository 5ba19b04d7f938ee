"""`zscir demo --fast` end to end: every stage runs, writes its outputs, and a rerun reuses them."""

from __future__ import annotations

import json
import warnings

import pytest


def test_fast_demo_runs_and_reuses_its_stages(tmp_path, capsys):
    from zscir.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["demo", "--fast", "--cache-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # quiet, honest output: no library deprecation noise, no loading bars in a non-terminal stream
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)
              and "create_causal_mask" not in str(w.message)]  # (the causal-mask one is the tokenizer lane's)
    assert not future, future
    assert "Loading pipeline components" not in captured.err and "it/s]" not in captured.err
    results = json.loads((tmp_path / "demo-results-fast" / "results.json").read_text())
    expected = {"image only", "text only", "image + text (sum)", "LinCIR (Phi trained here)", "LinCIR + RTD",
                "SEARLE-OTI", "SEARLE (Phi distilled here)", "LinCIR + CIG"}
    assert expected <= set(results["rows"])
    for label, by_bench in results["rows"].items():
        # CIG generates pseudo targets for the CIRR-format val only; every other row covers all three
        assert set(by_bench) == ({"cirr"} if "CIG" in label else {"cirr", "fashioniq", "circo"}), label
        assert all(0.0 <= v <= 100.0 for metrics in by_bench.values() for v in metrics.values())
        assert label in printed
    from PIL import Image

    grid = Image.open(tmp_path / "demo-results-fast" / "queries.png")
    assert results["grid_method"] == "LinCIR + RTD" and "grid (LinCIR + RTD)" in printed
    assert grid.width >= 8 * 160  # reference, target, pseudo target, top 5: tiles of 160 px
    assert (tmp_path / "world-fast" / "phi" / "config.json").is_file()
    for stage in ("phi", "rtd-text-encoder", "searle-phi"):  # each trained stage is kept where a rerun looks
        assert (tmp_path / "world-fast" / stage / "zscir_done.json").is_file(), stage

    assert results["calibration"]["clip"]["n"] > 0 and "gap_norm" in results["calibration"]["clip"]
    assert set(results["calibration"]["pseudo_token"]) == {"LinCIR", "SEARLE"}
    assert {c["name"] for c in results["acceptance"]} >= {"text only > image only (CIRR R@1)"}
    # per-query values of the compared metrics, from the same evaluation as each row (CIG's too)
    per_query = json.loads((tmp_path / "demo-results-fast" / "per_query.json").read_text())
    assert "per_query" not in results  # a compact file of its own: results.json stays readable
    for label, by_bench in per_query.items():
        for bench, metrics in by_bench.items():
            for metric, splits in metrics.items():
                mean = sum(sum(v) / len(v) for v in splits) / len(splits) * 100
                assert mean == pytest.approx(results["rows"][label][bench][metric], abs=0.05), (label, metric)
    assert set(per_query) == set(results["rows"])
    pairs = [c for c in results["acceptance"] if not c["name"].startswith("upper bound")]
    assert pairs and all(c["low"] <= c["difference"] <= c["high"] for c in pairs)
    assert "; difference " in printed and "(95% " in printed
    assert "Orderings of the published tables that hold on this run" in printed
    assert "world CLIP (shipped weights): ready in" in printed and "reused from the cache" not in printed

    # SEARLE ran in its own process (2+ cores); in-process, from the same cached artefacts, it gives the same rows
    import torch

    from zscir.demo.pipeline import DemoConfig, run_demo

    if torch.get_num_threads() >= 2:
        assert "SEARLE runs in a second process" in printed and "searle (parallel)" in results["seconds"]
    done = (tmp_path / "world-fast" / "searle-phi" / "zscir_done.json").stat().st_mtime_ns
    inline = run_demo(DemoConfig(cache_dir=tmp_path, fast=True, skip=("cig",), parallel=False, progress=False,
                                 out_dir=tmp_path / "inline"))
    assert "SEARLE runs in a second process" not in capsys.readouterr().out
    for label in ("SEARLE-OTI", "SEARLE (Phi distilled here)"):
        assert inline["rows"][label] == results["rows"][label]
    assert (tmp_path / "world-fast" / "searle-phi" / "zscir_done.json").stat().st_mtime_ns == done  # reused
    assert list(inline["rows"]) == [k for k in results["rows"] if "CIG" not in k]  # the table's row order
    warm = run_demo(DemoConfig(cache_dir=tmp_path, fast=True, skip=("cig",), progress=False,
                               out_dir=tmp_path / "warm"))  # SEARLE trained: no second process to start
    assert "SEARLE runs in a second process" not in capsys.readouterr().out and warm["rows"] == inline["rows"]

    # two seeds: seed 0 is reused stage by stage, seed 1 is a new world; mean ± std per row
    assert main(["demo", "--fast", "--cache-dir", str(tmp_path), "--skip", "searle", "cig", "--seeds", "2"]) == 0
    again = json.loads((tmp_path / "demo-results-fast" / "results.json").read_text())
    assert "world CLIP (shipped weights): reused from the cache" in capsys.readouterr().out
    assert again["per_seed"]["0"]["seconds"]["clip"] < results["seconds"]["clip"]  # reused, not retrained
    for label in ("image only", "LinCIR (Phi trained here)", "LinCIR + RTD"):
        assert again["per_seed"]["0"]["rows"][label] == results["rows"][label]
        seeds = [again["per_seed"][s]["rows"][label]["cirr"]["R@1"] for s in ("0", "1")]
        assert again["rows"][label]["cirr"]["R@1"] == pytest.approx(sum(seeds) / 2, abs=0.01)
        assert again["std"][label]["cirr"]["R@1"] == pytest.approx(abs(seeds[0] - seeds[1]) / 2 ** 0.5, abs=0.01)
    assert (tmp_path / "world-fast-seed1" / "data" / "manifest.json").is_file()
    seed_one = json.loads((tmp_path / "demo-results-fast" / "seed-1" / "per_query.json").read_text())
    assert "per_query" not in again and set(seed_one) == set(again["per_seed"]["1"]["rows"])
    summary = (tmp_path / "demo-results-fast" / "table.txt").read_text()
    assert f"world CLIP on {again['calibration']['clip']['n']:.0f} held-out pairs" in summary  # not "1000.0"


def test_multi_seed_summary_names_each_seeds_cig_weight_and_averages_the_pseudo_targets():
    from zscir.demo.pipeline import render_summary

    def sim(to_target, closer):
        return {"pseudo_target_similarity": {"cirr/val": {"to_target": to_target, "to_random": 0.7,
                                                          "to_reference": 0.75, "closer_to_target": closer, "n": 5}}}

    results = {"seeds": [0, 1], "seconds": {"total": 1.0}, "cig": {"alpha": 1.0, **sim(0.8, 60.0)},
               "per_seed": {"0": {"cig": {"alpha": 1.0, **sim(0.8, 60.0)}},
                            "1": {"cig": {"alpha": 0.8, **sim(0.9, 80.0)}}}}
    summary = render_summary(results, "")
    assert "α = 1.0 / 0.8 (seeds 0 / 1)" in summary
    # the multi-seed results carry seed 0's own CIG report at the top: the line must average the seeds
    assert "(cirr/val, mean of 2 seeds): CLIP cosine to the true target 0.850" in summary and "for 70.0%" in summary
    single = render_summary({"seconds": {"total": 1.0}, "cig": {"alpha": 0.8, **sim(0.9, 80.0)}}, "")
    assert "(cirr/val): CLIP cosine to the true target 0.900" in single and "α = 0.8," in single


def test_demo_oti_folders_follow_the_settings(tmp_path, tiny_backbone):
    # A rerun after the world CLIP or the OTI budget changed must get a fresh token folder, not the
    # store's "holds OTI tokens made with other settings" refusal (what a warm demo once stopped on).
    from zscir.demo.methods import MethodBudget, _oti_folder, oti_config
    from zscir.oti.store import TokenStore, store_meta

    root = tmp_path / "oti-references" / "cirr-val"
    first = _oti_folder(root, tiny_backbone, None, MethodBudget())
    TokenStore(first, store_meta(tiny_backbone, None, oti_config(MethodBudget())))
    assert _oti_folder(root, tiny_backbone, None, MethodBudget()) == first and first.is_dir()
    other = _oti_folder(root, tiny_backbone, None, MethodBudget(oti_steps=7))
    assert other != first and not first.exists()  # the old settings' folder is the demo's own leftover


def test_searle_worker_hands_its_error_to_the_main_process(tmp_path):
    from zscir.demo.methods import MethodBudget
    from zscir.demo.pipeline import start_searle_worker
    from zscir.errors import ZscirError

    worker = start_searle_worker(tmp_path / "world", tmp_path / "no-such-clip", MethodBudget.fast(), False, 1)
    with pytest.raises(ZscirError, match="no-such-clip"):
        worker.result()
    assert not worker.process.is_alive()
