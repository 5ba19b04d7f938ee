"""World calibration: geometry vs its definition, the acceptance orderings, seed aggregation, shipped CLIP."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def test_modality_geometry_matches_a_loop_over_pairs():
    from zscir.demo.calibration import modality_geometry

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 8, generator=gen) + 2.0
    texts = images + 0.5 * torch.randn(40, 8, generator=gen) - 1.0
    geometry = modality_geometry(images, texts)
    img = [v / v.norm() for v in images]
    txt = [v / v.norm() for v in texts]
    mean_i, mean_t = sum(img) / 40, sum(txt) / 40
    assert geometry["gap_norm"] == pytest.approx((mean_i - mean_t).norm().item(), abs=1e-3)
    assert geometry["centroid_cosine"] == pytest.approx(
        (mean_i @ mean_t / (mean_i.norm() * mean_t.norm())).item(), abs=1e-3)
    assert geometry["matched_cosine"] == pytest.approx(sum((a @ b).item() for a, b in zip(img, txt)) / 40, abs=1e-3)
    hits = sum(max(range(40), key=lambda j: (txt[i] @ img[j]).item()) == i for i in range(40))
    assert geometry["t2i_R@1"] == pytest.approx(100 * hits / 40, abs=0.01)
    hits = sum(max(range(40), key=lambda j: (img[i] @ txt[j]).item()) == i for i in range(40))
    assert geometry["i2t_R@1"] == pytest.approx(100 * hits / 40, abs=0.01)
    # opposite cones: centroid cosine near -1
    assert modality_geometry(images, -images)["centroid_cosine"] < -0.99
    # the raw scale: RMS per coordinate, and LinCIR's noise against the raw matched distance (Monte Carlo)
    assert geometry["image_rms"] == pytest.approx((images ** 2).mean().sqrt().item(), abs=1e-3)
    assert geometry["text_rms"] == pytest.approx((texts ** 2).mean().sqrt().item(), abs=1e-3)
    noise = (torch.rand(200_000, 1, generator=gen) * torch.randn(200_000, 8, generator=gen)).norm(dim=1).mean()
    distance = sum((a - b).norm().item() for a, b in zip(images, texts)) / 40
    assert geometry["noise_over_gap"] == pytest.approx(noise.item() / distance, rel=1e-2)
    # scaling both modalities by one constant changes the raw properties only
    scaled = modality_geometry(0.1 * images, 0.1 * texts)
    assert scaled["image_rms"] == pytest.approx(0.1 * geometry["image_rms"], abs=1e-3)
    assert scaled["noise_over_gap"] == pytest.approx(10 * geometry["noise_over_gap"], rel=1e-2)
    assert all(scaled[k] == geometry[k] for k in ("centroid_cosine", "gap_norm", "matched_cosine", "t2i_R@1"))


def _rms(backbone, pixels) -> float:
    """Root-mean-square per coordinate of a backbone's raw image embeddings."""
    return backbone.encode_pixels(pixels).float().pow(2).mean().sqrt().item()


def test_embedding_rms_sets_the_raw_scale_and_keeps_every_cosine(tmp_path):
    # CLIP's loss sees only cosines: the recipe's final rescale changes raw embeddings (what LinCIR's and
    # RTD's unit noise is added to) by one factor and leaves retrieval alone
    from dataclasses import replace

    from zscir.data.synthetic.corpora import clip_pair_sampler
    from zscir.demo.world_models import default_clip_config, train_world_clip
    from zscir.models.backbone import Backbone
    from zscir.training.clip import scale_pixels

    config = replace(default_clip_config(fast=True), steps=2, batch_size=8, continue_steps=0)
    plain = train_world_clip(tmp_path / "plain", replace(config, embedding_rms=None), progress=False)
    scaled = train_world_clip(tmp_path / "scaled", replace(config, embedding_rms=0.5), progress=False)
    a, b = Backbone.load(str(plain)), Backbone.load(str(scaled))
    pixels = scale_pixels(clip_pair_sampler(image_size=config.size.image_size, **config.data), config)
    assert _rms(b, pixels) == pytest.approx(0.5, rel=1e-4)
    factor = json.loads((scaled / "train_log.json").read_text())["embedding_scale"]
    assert factor == pytest.approx(0.5 / _rms(a, pixels), rel=1e-4)
    images, captions = clip_pair_sampler(config.size.image_size)(random.Random(3), 6)
    texts = list(captions) + ["Make the circle green, and remove the star."]
    assert torch.allclose(b.encode_image(images), factor * a.encode_image(images), rtol=1e-4, atol=1e-5)
    assert torch.allclose(b.encode_text(texts), factor * a.encode_text(texts), rtol=1e-4, atol=1e-5)
    assert factor != pytest.approx(1.0, abs=0.05)  # the test can tell a rescale from none


def _rows(**cirr_r1):
    rows = {}
    for label, value in cirr_r1.items():
        metrics = {"R@1": value, "R@10": value + 20}
        rows[label] = {"cirr": metrics, "fashioniq": {"R@10": value}, "circo": {"mAP@10": value}}
    return rows


def test_acceptance_orderings_from_rows():
    from zscir.demo import acceptance as a

    good = _rows(**{a.IMAGE: 5, a.TEXT: 10, a.SUM: 8, a.UPPER: 60, a.LINCIR: 12, a.RTD: 14, a.SEARLE: 11,
                    a.OTI: 13})
    good[a.CIG] = {"cirr": {"R@1": 12.5, "R@10": 32.5}}
    checks = a.acceptance(good)
    assert checks and all(c.holds for c in checks)
    assert len(checks) == 1 + 6 + 3 + 2 + 1
    bad = json.loads(json.dumps(good))
    bad[a.TEXT]["cirr"]["R@1"] = 4.0  # text below image
    bad[a.RTD]["circo"]["mAP@10"] = 1.0
    failing = {c.name for c in a.acceptance(bad, [good, bad]) if not c.holds}
    assert failing == {"text only > image only (CIRR R@1)", "LinCIR + RTD > LinCIR (circo mAP@10)"}
    seeds = {c.name: c.seeds_holding for c in a.acceptance(bad, [good, bad])}
    assert seeds["text only > image only (CIRR R@1)"] == 1
    del good[a.CIG]  # a skipped stage is left out, not failed
    assert not any("CIG" in c.name for c in a.acceptance(good))


def test_paired_difference_against_its_definition_and_its_coverage():
    from zscir.demo.acceptance import Z95, paired_difference, pooled_difference

    rng = np.random.default_rng(0)
    left = [rng.integers(0, 2, n).astype(float).tolist() for n in (50, 80, 65)]  # three FashionIQ-like splits
    right = [rng.integers(0, 2, len(a)).astype(float).tolist() for a in left]
    difference, error = paired_difference(left, right)
    d = [np.subtract(a, b) for a, b in zip(left, right)]
    assert difference == pytest.approx(100 * np.mean([x.mean() for x in d]))  # the rows' difference
    assert error == pytest.approx(100 * np.sqrt(sum(x.var(ddof=1) / len(x) for x in d)) / 3)
    assert paired_difference([[1.0, 0.0]], [[1.0, 0.0]]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same splits"):
        paired_difference([[1.0, 0.0]], [[1.0]])
    assert pooled_difference([(1.0, 3.0), (2.0, 4.0)]) == (1.5, 2.5)

    # the interval's coverage: two methods of equal accuracy, correlated as two CIR methods are (both find the
    # easy queries): 95% of the intervals over 500 queries must contain the true difference 0
    covered, trials = 0, 2000
    for _ in range(trials):
        easy = rng.random(500) < 0.5
        a = np.where(easy, rng.random(500) < 0.8, rng.random(500) < 0.1).astype(float)
        b = np.where(easy, rng.random(500) < 0.8, rng.random(500) < 0.1).astype(float)
        diff, se = paired_difference([a.tolist()], [b.tolist()])
        covered += diff - Z95 * se <= 0.0 <= diff + Z95 * se
    assert 0.93 <= covered / trials <= 0.97


def test_acceptance_intervals_from_per_query_values():
    from zscir.demo import acceptance as a

    rows = _rows(**{a.IMAGE: 5, a.TEXT: 10, a.SUM: 8, a.UPPER: 60, a.LINCIR: 12, a.RTD: 14, a.SEARLE: 11,
                    a.OTI: 13})
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 400).astype(float)
    queries = {label: {"cirr": {"R@1": [base.tolist()], "R@10": [base.tolist()]},
                       "fashioniq": {"R@10": [base.tolist()] * 3}, "circo": {"mAP@10": [base.tolist()]}}
               for label in rows}
    flipped = base.copy()
    flipped[np.flatnonzero(base == 0)[:40]] = 1.0  # RTD finds 40 more CIRR targets: +10 points, far from noise
    queries[a.RTD]["cirr"]["R@1"] = [flipped.tolist()]
    noisy = base.copy()
    noisy[np.flatnonzero(base == 0)[:3]] = 1.0  # SEARLE-OTI: 3 more hits, 3 fewer
    noisy[np.flatnonzero(base == 1)[:3]] = 0.0
    queries[a.OTI]["cirr"]["R@1"] = [noisy.tolist()]
    checks = {c.name: c for c in a.acceptance(rows, None, [queries, queries])}
    rtd = checks["LinCIR + RTD > LinCIR (cirr R@1)"]
    assert rtd.difference == pytest.approx(10.0) and rtd.low > 0 and not rtd.within_noise
    oti = checks["SEARLE-OTI > best of image / text / sum (CIRR R@1)"]  # paired against text only, the best
    assert oti.difference == pytest.approx(0.0) and oti.within_noise
    assert checks["upper bound >= best method + 10 (CIRR R@1)"].low is None  # not a two-row difference
    assert all(c.low is None for c in a.acceptance(rows))  # no per-query values: no interval


def test_printed_difference_of_a_check():
    from zscir.demo.pipeline import _difference

    assert _difference({"difference": -1.7, "low": -3.3, "high": -0.2}) == "; difference -1.7 (95% -3.3 to -0.2)"
    assert _difference({"difference": 0.8, "low": -1.1, "high": 2.7}).endswith("; within noise")
    assert _difference({"difference": 0.0, "low": 0.0, "high": 0.0}) == "; identical query by query"
    assert _difference({"low": None}) == ""


def test_mean_std_rows():
    from zscir.demo.acceptance import mean_std_rows

    runs = [{"m": {"cirr": {"R@1": v}}} for v in (1.0, 2.0, 6.0)]
    mean, std = mean_std_rows(runs)
    assert mean["m"]["cirr"]["R@1"] == 3.0
    sample_std = (((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2) ** 0.5
    assert std["m"]["cirr"]["R@1"] == pytest.approx(sample_std, abs=0.01)


def test_pack_and_unpack_world_clip_round_trip(tmp_path):
    from zscir.data.synthetic.corpora import clip_pair_sampler
    from zscir.demo.world_models import pack_world_clip, unpack_world_clip, world_tokenizer
    from zscir.models.backbone import Backbone
    from zscir.models.factory import ClipSize, save_weights_fp16
    from zscir.training.clip import train_clip
    from zscir.training.config import ClipTrainConfig

    size = ClipSize(projection_dim=16, text_hidden=32, text_layers=1, text_heads=2, context_length=32,
                    vision_hidden=32, vision_layers=1, vision_heads=2, image_size=16, patch_size=8)
    config = ClipTrainConfig(size=size, steps=3, batch_size=8, modality_offset=2.0)
    trained = train_clip(clip_pair_sampler(16), world_tokenizer(32), tmp_path / "trained", config, progress=False)
    package = pack_world_clip(trained, tmp_path / "package")
    stored = (package / "model.safetensors").stat().st_size
    assert stored < (trained / "model.safetensors").stat().st_size
    key = "text_model.embeddings.token_embedding.weight.ids"
    rows = load_file(str(package / "model.safetensors"))[key]
    assert 0 < len(rows) < 1000  # only the rows training touched (of 49408)
    half = tmp_path / "half"  # a run stored in fp16 (`train-clip --fp16`) packs the same rows
    shutil.copytree(trained, half)
    save_weights_fp16(half)
    packed_half = pack_world_clip(half, tmp_path / "package-half") / "model.safetensors"
    assert torch.equal(load_file(str(packed_half))[key], rows)
    rebuilt = unpack_world_clip(package, tmp_path / "rebuilt")
    a, b = Backbone.load(str(trained)), Backbone.load(str(rebuilt))
    texts = ["Make the circle green, and remove the star.", "a photo of $", "a red square on a white background"]
    assert torch.allclose(a.encode_text(texts), b.encode_text(texts), atol=2e-2)
    for (name, x), (_, y) in zip(a.text.state_dict().items(), b.text.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-2, rtol=1e-2), name  # fp16 storage
    images, _ = clip_pair_sampler(16)(random.Random(0), 4)
    assert F.cosine_similarity(a.encode_image(images), b.encode_image(images)).min() > 0.999


def test_shipped_world_clip_is_the_code_recipe_and_a_short_retrain_reproduces_its_start(tmp_path):
    from zscir.demo.calibration import heldout_pairs, modality_geometry
    from zscir.demo.world_models import (
        SHIPPED_CLIP,
        _clip_config_from_log,
        default_clip_config,
        train_world_clip,
        unpack_world_clip,
    )
    from zscir.models.backbone import Backbone

    log = json.loads((SHIPPED_CLIP / "train_log.json").read_text())
    config = _clip_config_from_log(log)
    assert config.size == default_clip_config().size
    assert {k: v for k, v in vars(config).items() if k not in ("threads",)} == {
        k: v for k, v in vars(default_clip_config()).items() if k not in ("threads",)}
    short = train_world_clip(tmp_path / "short", config, progress=False, stop_after=6)
    head = json.loads((short / "train_log.json").read_text())["loss_head"]
    assert head == pytest.approx(log["loss_head"][:6], rel=1e-3)  # the same recipe, data and initialisation
    # the shipped weights retrieve far above chance on fresh held-out pairs
    shipped = Backbone.load(str(unpack_world_clip(SHIPPED_CLIP, tmp_path / "shipped")))
    images, captions = heldout_pairs(config.size.image_size, n=200, seed="test-heldout")
    geometry = modality_geometry(shipped.encode_image(images), shipped.encode_text(captions))
    assert geometry["t2i_R@1"] > 20 * (100 / 200) and geometry["i2t_R@1"] > 20 * (100 / 200)
    # the recipe's raw embedding scale, on the recipe's own image draw (fp16 storage)
    from zscir.data.synthetic.corpora import clip_pair_sampler
    from zscir.training.clip import scale_pixels

    pixels = scale_pixels(clip_pair_sampler(image_size=config.size.image_size, **config.data), config)
    assert _rms(shipped, pixels) == pytest.approx(config.embedding_rms, rel=2e-3)


def test_train_clip_command_trains_saves_and_reports_geometry(tmp_path, capsys):
    from zscir.cli import main
    from zscir.models.backbone import Backbone

    out = tmp_path / "clip"
    assert main(["train-clip", "--out", str(out), "--steps", "2", "--continue-steps", "2", "--batch-size", "8",
                 "--fp16", "--no-progress"]) == 0
    geometry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert geometry["n"] == 1000 and -1 <= geometry["centroid_cosine"] <= 1
    backbone = Backbone.load(str(out))
    assert len(backbone.tokenizer) == 49408  # the real CLIP BPE
    assert backbone.tokenizer("the circle's color.", add_special_tokens=False)["input_ids"] != []
    assert main(["train-clip", "--out", str(out)]) == 2  # refuses to overwrite
    mixed = tmp_path / "mixed"  # the composed-pretraining experiment: its mix and context are recorded
    assert main(["train-clip", "--out", str(mixed), "--steps", "1", "--batch-size", "8", "--composed-fraction", "0.5",
                 "--attribute-fraction", "0.3", "--context-length", "64", "--no-progress",
                 "--continue-steps", "1", "--continue-composed-fraction", "0.1"]) == 0
    recorded = json.loads((mixed / "train_log.json").read_text())["config"]
    assert recorded["data"] == {"composed_fraction": 0.5, "attribute_fraction": 0.3}
    assert recorded["continue_steps"] == 1  # the recipe's second-phase mix, with the one share overridden
    assert recorded["continue_data"] == {"composed_fraction": 0.1, "attribute_fraction": 0.3}
    assert main(["train-clip", "--out", str(tmp_path / "x"), "--phase-one", str(tmp_path)]) == 2  # not a CLIP run
    assert recorded["size"]["context_length"] == 64 and Backbone.load(str(mixed)).context_length == 64
    assert main(["train-clip", "--out", str(tmp_path / "bad"), "--composed-fraction", "2"]) == 2


def test_continued_pretraining_from_a_saved_first_phase_gives_the_whole_run(tmp_path):
    # The second phase (e.g. composed texts) starts from the first phase's weights with its own seeded
    # streams, so loading a saved first phase gives exactly the weights of training both phases here.
    from dataclasses import replace

    from safetensors.torch import load_file

    from zscir.demo.world_models import default_clip_config, train_world_clip
    from zscir.errors import ZscirError

    config = replace(default_clip_config(fast=True), steps=2, batch_size=8, continue_steps=2,
                     continue_data={"composed_fraction": 0.5})
    whole = train_world_clip(tmp_path / "whole", config, progress=False)
    first = train_world_clip(tmp_path / "first", config.first_phase(), progress=False)
    resumed = train_world_clip(tmp_path / "resumed", config, progress=False, phase_one=first)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(first / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the second phase did train
    log = json.loads((whole / "train_log.json").read_text())
    assert log["continue_steps"] == 2 and log["config"]["continue_data"] == {"composed_fraction": 0.5}
    with pytest.raises(ZscirError, match="not the first phase"):  # another recipe's first phase is refused
        train_world_clip(tmp_path / "other", replace(config, lr=5e-4), progress=False, phase_one=first)
