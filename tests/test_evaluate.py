"""Evaluation runner, `zscir evaluate` and `zscir submit` end to end on tiny models and generated benchmarks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.cli import main
from zscir.compose import PromptTemplate, compose_queries, text_queries
from zscir.data.images import load_image
from zscir.data.records import load_benchmark
from zscir.evaluation.metrics import evaluate_split
from zscir.evaluation.runner import Evaluator
from zscir.retrieval.features import FeatureCache

CAPTIONS = ["is red instead", "has a blue square", "shows two circles.", "is darker and smaller",
            "adds a star on top", "removes the background"]


def _png(path, seed, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_cirr(root, n_images=8, n_queries=6):
    # test1 needs >= 51 images: the server files list 50 per query, the reference excluded
    for split, prefix, size in (("val", "dev", n_images), ("test1", "test1", 55)):
        names = [f"{prefix}-{i}-img0" for i in range(size)]
        for i, name in enumerate(names):
            _png(root / split / f"{name}.png", seed=(500 if split == "test1" else 0) + i)
        _dump(root / "image_splits" / f"split.rc2.{split}.json", {n: f"./{split}/{n}.png" for n in names})
        records = []
        for q in range(n_queries):
            ref, target = names[q % size], names[(q + 3) % size]
            members = [names[(q + j) % size] for j in range(6)]
            record = {"pairid": 100 + q, "reference": ref, "caption": CAPTIONS[q % len(CAPTIONS)],
                      "img_set": {"id": q, "members": members}}
            if split == "val":
                record.update(target_hard=target, target_soft={target: 1.0})
            records.append(record)
        _dump(root / "captions" / f"cap.rc2.{split}.json", records)
    return root


def make_fashioniq(root, n_images=5, n_queries=4):
    for c, category in enumerate(("dress", "shirt", "toptee")):
        ids = [f"{category}{i}" for i in range(n_images)]
        for i, image_id in enumerate(ids):
            _png(root / "images" / f"{image_id}.png", seed=100 + 10 * c + i)
        _dump(root / "image_splits" / f"split.{category}.val.json", ids)
        _dump(root / "captions" / f"cap.{category}.val.json", [
            {"candidate": ids[q], "target": ids[(q + 1) % n_images],
             "captions": [CAPTIONS[q], CAPTIONS[q + 1]]} for q in range(n_queries)])
    return root


def make_circo(root, n_images=60, n_queries=5):
    info = []
    for i in range(n_images):
        file_name = f"{i:012d}.png"
        _png(root / "COCO2017_unlabeled" / "unlabeled2017" / file_name, seed=300 + i)
        info.append({"id": 1000 + i, "file_name": file_name})
    _dump(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", {"images": info})
    for split in ("val", "test"):
        records = []
        for q in range(n_queries):
            record = {"id": q, "reference_img_id": 1000 + q, "relative_caption": CAPTIONS[q],
                      "shared_concept": "a shape"}
            if split == "val":
                record.update(target_img_id=1010 + q, gt_img_ids=[1010 + q, 1020 + q])
            records.append(record)
        _dump(root / "annotations" / f"{split}.json", records)
    return root


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    return {"cirr": make_cirr(base / "cirr"), "fashioniq": make_fashioniq(base / "fiq"),
            "circo": make_circo(base / "circo")}


@pytest.fixture(scope="module")
def phi_file(tmp_path_factory, tiny_size):
    from zscir.models.phi import Phi, save_published_phi

    torch.manual_seed(3)
    phi = Phi(tiny_size.projection_dim, tiny_size.text_hidden).eval()
    return save_published_phi(phi, tmp_path_factory.mktemp("phi") / "phi.pt")


def _cli(args, tmp_path, clip_dir):
    return main(["evaluate", *args, "--backbone", str(clip_dir), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out")])


def _by_hand(backbone, split, phi, circo_concept=False):
    """Slow reference: encode every image on its own, Phi, compose, score, metrics."""
    def encode(name):
        return backbone.encode_image([load_image(split.images[name])])

    gallery = F.normalize(torch.cat([encode(n) for n in split.gallery]), dim=-1)
    refs = torch.cat([encode(q.reference) for q in split.queries])
    with torch.no_grad():
        tokens = phi(refs)
    captions = [tuple(f"find {q.shared_concept} but {c}" if circo_concept else c for c in q.captions)
                for q in split.queries]
    queries = compose_queries(backbone, tokens, captions, PromptTemplate())
    return evaluate_split(split, queries @ gallery.T), queries @ gallery.T


@pytest.mark.parametrize("dataset", ["cirr", "fashioniq", "circo"])
def test_phi_method_equals_composing_by_hand(dataset, benchmarks, phi_file, tiny_backbone, tmp_path):
    from zscir.models.phi import load_inversion_network

    phi = load_inversion_network(phi_file)
    cache = FeatureCache(tmp_path / "cache", progress=False)
    for split in load_benchmark(dataset, benchmarks[dataset], "val"):
        result = Evaluator(tiny_backbone, split, cache).evaluate("phi", phi=phi)
        expected_metrics, expected_scores = _by_hand(tiny_backbone, split, phi)
        torch.testing.assert_close(result.scores, expected_scores, rtol=1e-4, atol=1e-5)
        assert result.metrics.keys() == expected_metrics.keys()
        for name, value in expected_metrics.items():
            assert result.metrics[name] == pytest.approx(value), name


def test_image_text_sum_methods(benchmarks, tiny_backbone, tmp_path):
    split = load_benchmark("fashioniq", benchmarks["fashioniq"], "val", categories=["shirt"])[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    refs = torch.cat([tiny_backbone.encode_image([load_image(split.images[q.reference])]) for q in split.queries])
    image_q = F.normalize(refs, dim=-1)
    # FashionIQ text: "c1 and c2" and "c2 and c1", each normalised, averaged, renormalised
    rows = []
    for q in split.queries:
        c1, c2 = q.captions
        both = F.normalize(tiny_backbone.encode_text([f"{c1} and {c2}", f"{c2} and {c1}"]), dim=-1)
        rows.append(F.normalize(both.sum(0), dim=-1))
    text_q = torch.stack(rows)
    torch.testing.assert_close(ev.query_vectors("image"), image_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev.query_vectors("text"), text_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev.query_vectors("sum"), F.normalize(image_q + text_q, dim=-1), rtol=1e-5, atol=1e-6)
    # the cached query matrix is reused on a rerun and equals a fresh computation
    again = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    torch.testing.assert_close(again.query_vectors("text"),
                               text_queries(tiny_backbone, [q.captions for q in split.queries]))
    result = ev.evaluate("sum")
    assert set(result.metrics) == {"R@10", "R@50", "Avg"}


def test_fusion_api(benchmarks, phi_file, tiny_backbone, tmp_path):
    """CIG-style: two query sets from the same evaluator, fused, evaluated from the matrix."""
    from zscir.compose import fuse_queries
    from zscir.models.phi import load_inversion_network

    phi = load_inversion_network(phi_file)
    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    q_ref = ev.query_vectors("phi", phi=phi)
    tokens = torch.randn(len(split.queries), tiny_backbone.hidden_size, generator=torch.Generator().manual_seed(1))
    q_gen = ev.query_vectors("phi", pseudo_tokens=tokens)
    fused = fuse_queries(q_ref, q_gen, 0.7)
    result = ev.evaluate(queries=fused)
    torch.testing.assert_close(result.scores, fused @ ev.gallery_features().T)
    assert ev.evaluate(queries=q_ref).metrics == ev.evaluate("phi", phi=phi).metrics


def test_cli_evaluate_each_layout(benchmarks, phi_file, tiny_clip_dir, tmp_path, capsys):
    for dataset in ("cirr", "fashioniq", "circo"):
        out = tmp_path / dataset
        code = _cli(["--dataset", dataset, "--root", str(benchmarks[dataset]), "--method", "phi",
                     "--phi", str(phi_file)], out, tiny_clip_dir)
        assert code == 0, capsys.readouterr().err
        metrics = json.loads((out / "out" / "metrics.json").read_text())["metrics"]
        config = json.loads((out / "out" / "config.json").read_text())
        assert config["dataset"] == dataset and config["phi"] == str(phi_file)
        if dataset == "fashioniq":
            assert set(metrics) == {"fashioniq/dress/val", "fashioniq/shirt/val", "fashioniq/toptee/val", "mean"}
            mean = np.mean([metrics[f"fashioniq/{c}/val"]["R@10"] for c in ("dress", "shirt", "toptee")])
            assert metrics["mean"]["R@10"] == pytest.approx(mean)
        else:
            assert list(metrics) == [f"{dataset}/val"]
    printed = capsys.readouterr().out
    assert "R@1" in printed and "mAP@5" in printed


def test_cli_matches_api(benchmarks, phi_file, tiny_clip_dir, tiny_backbone, tmp_path):
    from zscir.models.phi import load_inversion_network

    assert _cli(["--dataset", "circo", "--root", str(benchmarks["circo"]), "--method", "phi", "--phi", str(phi_file),
                 "--circo-text", "concept", "--target-pad"], tmp_path, tiny_clip_dir) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["circo/val"]
    split = load_benchmark("circo", benchmarks["circo"], "val")[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "other", progress=False), pad_to_ratio=1.25,
                   circo_text="concept")
    assert ev.captions()[0] == (f"find a shape but {CAPTIONS[0]}",)
    api = ev.evaluate("phi", phi=load_inversion_network(phi_file)).metrics
    assert metrics == pytest.approx(api)


def test_text_encoder_option(benchmarks, tiny_clip_dir, tiny_backbone, tmp_path):
    import copy

    from zscir.models.text_tower import RTD_KEY

    tower = copy.deepcopy(tiny_backbone.text)
    with torch.no_grad():
        tower.text_projection.weight.add_(0.5 * torch.randn_like(tower.text_projection.weight))
    path = tmp_path / "rtd.pt"
    torch.save({RTD_KEY: tower.state_dict()}, path)
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--method", "text", "--text-encoder",
                 str(path)], tmp_path, tiny_clip_dir) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["cirr/val"]
    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    with_tower = ev.query_vectors("text", text_tower=tower)
    torch.testing.assert_close(with_tower, text_queries(tiny_backbone.with_text_tower(tower),
                                                        [q.captions for q in split.queries]))
    assert not torch.allclose(with_tower, ev.query_vectors("text"))
    assert metrics == pytest.approx(ev.evaluate(queries=with_tower).metrics)


def test_evaluating_a_tower_in_training_leaves_it_trainable(benchmarks, tiny_backbone, tmp_path):
    """An RTD tower evaluated mid-training keeps its mode and gradients (with_text_tower used to freeze it,
    so the next training step had no graph), and gives the queries of a frozen copy."""
    import copy

    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    tower = copy.deepcopy(tiny_backbone.text).train().requires_grad_(True)
    with torch.no_grad():
        tower.text_projection.weight.add_(0.5 * torch.randn_like(tower.text_projection.weight))
    queries = ev.query_vectors("text", text_tower=tower)
    assert tower.training and all(p.requires_grad for p in tower.parameters())
    frozen = copy.deepcopy(tower).eval().requires_grad_(False)
    torch.testing.assert_close(queries, text_queries(tiny_backbone.with_text_tower(frozen),
                                                     [q.captions for q in split.queries]))
    loss = tiny_backbone.encode_composed(["a red circle"], text_tower=tower).text_embeds.square().sum()
    loss.backward()
    assert tower.text_projection.weight.grad is not None


def test_missing_images_stop_or_skip(tmp_path, tiny_clip_dir, capsys):
    root = make_cirr(tmp_path / "cirr")
    (root / "val" / "dev-3-img0.png").unlink()  # the target of query 0 and reference of query 3
    (root / "val" / "dev-7-img0.png").write_bytes(b"\x89PNG broken")  # a corrupt gallery image
    args = ["--dataset", "cirr", "--root", str(root), "--method", "image"]
    assert _cli(args, tmp_path, tiny_clip_dir) == 2
    err = capsys.readouterr().err
    assert "dev-3-img0.png" in err and "--skip-missing" in err and not (tmp_path / "out" / "metrics.json").exists()

    (root / "val" / "dev-3-img0.png").write_bytes(b"")  # now exists but corrupt: caught during decoding
    assert _cli(args, tmp_path, tiny_clip_dir) == 2
    err = capsys.readouterr().err
    assert "2 images are missing or undecodable" in err and "dev-7-img0.png" in err

    assert _cli([*args, "--skip-missing"], tmp_path, tiny_clip_dir) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # query 0 (target dev-3) and query 3 (reference dev-3) and query 4 (target dev-7) are dropped
    assert saved["dropped_queries"]["cirr/val"] == 3 and saved["queries"]["cirr/val"] == 3
    assert saved["dropped_images"]["cirr/val"] == 2
    assert "evaluated 3 of 6 queries (3 dropped; 2 gallery images missing or undecodable)" in out


def test_submit_files_valid(benchmarks, phi_file, tiny_clip_dir, tmp_path):
    from zscir.evaluation.submission import validate_circo_submission, validate_cirr_submission

    for dataset in ("cirr", "circo"):
        out = tmp_path / dataset
        code = main(["submit", "--dataset", dataset, "--root", str(benchmarks[dataset]), "--backbone",
                     str(tiny_clip_dir), "--method", "phi", "--phi", str(phi_file), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(out)])
        assert code == 0
        split = load_benchmark(dataset, benchmarks[dataset], "test")[0]
        files = sorted(out.glob(f"{dataset}_*.json"))
        if dataset == "cirr":
            assert [f.name for f in files] == ["cirr_test1_recall.json", "cirr_test1_recall_subset.json"]
            for f in files:
                validate_cirr_submission(json.loads(f.read_text()), split, k=None if "subset" in f.name else 50)
        else:
            assert [f.name for f in files] == ["circo_test.json"]
            validate_circo_submission(json.loads(files[0].read_text()), split)


def test_bad_arguments(benchmarks, tiny_clip_dir, tmp_path, capsys):
    root = str(benchmarks["cirr"])
    assert _cli(["--dataset", "cirr", "--root", root, "--method", "phi"], tmp_path, tiny_clip_dir) == 2
    assert "--phi" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pt"
    from zscir.models.phi import Phi, save_published_phi

    save_published_phi(Phi(7, 9), wrong)
    assert _cli(["--dataset", "cirr", "--root", root, "--method", "phi", "--phi", str(wrong)],
                tmp_path, tiny_clip_dir) == 2
    assert "7 → 9" in capsys.readouterr().err


def test_empty_captions_are_composed_and_counted_in_submit_and_evaluate(phi_file, tiny_clip_dir, tmp_path, capsys):
    """Real files hold empty captions (CIRR test1 pairid 27098 is " "; FashionIQ val has empty first halves)."""
    cirr = make_cirr(tmp_path / "cirr")
    path = cirr / "captions" / "cap.rc2.test1.json"
    records = json.loads(path.read_text())
    records.append(dict(records[0], pairid=27098, caption=" "))
    _dump(path, records)
    out = tmp_path / "submit"
    assert main(["submit", "--dataset", "cirr", "--split", "test", "--root", str(cirr), "--backbone",
                 str(tiny_clip_dir), "--method", "phi", "--phi", str(phi_file), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"note: cirr/test1: 1 query with an empty caption, composed as written: {path}: record 6" in printed
    submission = json.loads((out / "cirr_test1_recall.json").read_text())
    assert "27098" in submission and len(submission["27098"]) == 50

    fiq = make_fashioniq(tmp_path / "fiq")
    path = fiq / "captions" / "cap.toptee.val.json"
    records = json.loads(path.read_text())
    records[2]["captions"][0] = ""
    _dump(path, records)
    assert _cli(["--dataset", "fashioniq", "--root", str(fiq), "--method", "phi", "--phi", str(phi_file)],
                tmp_path, tiny_clip_dir) == 0
    assert "fashioniq/toptee/val: 1 query with an empty caption, composed as written" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["queries"]["fashioniq/toptee/val"] == 4
    assert saved["empty_caption_queries"] == {"fashioniq/dress/val": 0, "fashioniq/shirt/val": 0,
                                              "fashioniq/toptee/val": 1}


def test_submit_with_pseudo_targets_fuses_with_the_published_alpha(benchmarks, phi_file, tiny_clip_dir,
                                                                   tiny_backbone, tmp_path, capsys):
    """`zscir submit --pseudo-targets DIR`: CIRR test is fused with α 0.5 (lan-lw/ComposedImageGen
    SEARLE_CIG/src/generate_test_submission.py) unless --alpha is given; the files equal ranking the fused queries."""
    from zscir.evaluation.fusion import pseudo_target_queries
    from zscir.evaluation.submission import write_submission
    from zscir.generation.cig import image_path
    from zscir.models.phi import load_inversion_network

    root = benchmarks["cirr"]
    split = load_benchmark("cirr", root, "test")[0]
    pseudo = tmp_path / "pseudo"
    for i, q in enumerate(split.queries):
        _png(image_path(pseudo, q.query_id), seed=900 + i)

    def submit(name, *extra):
        return main(["submit", "--dataset", "cirr", "--root", str(root), "--backbone", str(tiny_clip_dir),
                     "--method", "phi", "--phi", str(phi_file), "--pseudo-targets", str(pseudo), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / name), *extra])

    assert submit("published") == 0
    assert "CIG: alpha 0.5 (published for cirr test)" in capsys.readouterr().out
    assert submit("given", "--alpha", "0.9") == 0
    assert "CIG: alpha 0.9 (--alpha)" in capsys.readouterr().out

    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache2", progress=False))
    fused = pseudo_target_queries(ev, load_inversion_network(phi_file), pseudo)
    for alpha, name in ((0.5, "published"), (0.9, "given")):
        expected = write_submission(split, fused.fuse(alpha) @ ev.gallery_features().T, tmp_path / f"hand-{name}")
        for path in expected:
            assert json.loads(path.read_text()) == json.loads((tmp_path / name / path.name).read_text()), (name, path)
    plain = write_submission(split, fused.fuse(1.0) @ ev.gallery_features().T, tmp_path / "plain")[0]
    assert json.loads(plain.read_text()) != json.loads((tmp_path / "published" / plain.name).read_text())


def test_a_pic2word_checkpoint_composes_with_its_own_prompt_by_default(benchmarks, tiny_backbone, tmp_path):
    from zscir.compose import TEMPLATES
    from zscir.models.phi import Pic2WordMapper

    torch.manual_seed(4)
    net = Pic2WordMapper(tiny_backbone.projection_dim, tiny_backbone.hidden_size).eval()
    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    with torch.no_grad():
        tokens = net(ev.reference_features())
    by_hand = compose_queries(tiny_backbone, tokens, [q.captions for q in split.queries],
                              PromptTemplate(TEMPLATES["pic2word"]))
    torch.testing.assert_close(ev.query_vectors("phi", phi=net), by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ev.query_vectors("phi", phi=net, template="default"), by_hand)


# ---- what the official evaluations offer: OTI tokens, --l2-normalize, fp16 weight rounding --------------


def _metrics(tmp_path):
    return json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]


def test_evaluate_saved_oti_tokens(benchmarks, tiny_backbone, tiny_clip_dir, tmp_path, capsys):
    """SEARLE's --eval-type oti: each query composed with the token `zscir invert` saved for its reference."""
    from zscir.evaluation.runner import evaluate_saved_tokens
    from zscir.oti.optimise import OTIConfig
    from zscir.oti.store import TokenStore, invert_to_store

    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    refs = list(dict.fromkeys(q.reference for q in split.queries))
    embeds = tiny_backbone.encode_image([load_image(split.images[n]) for n in refs])
    config = OTIConfig(steps=3, phrase_weight=0)
    invert_to_store(tiny_backbone, refs, embeds, None, config, tmp_path / "tok", progress=False)
    tokens = TokenStore(tmp_path / "tok").lookup([q.reference for q in split.queries])
    expected, scores = _by_hand(tiny_backbone, split, lambda _: tokens)
    results = evaluate_saved_tokens(tiny_backbone, [split], FeatureCache(tmp_path / "c", progress=False), {},
                                    tmp_path / "tok")
    torch.testing.assert_close(results["cirr/val"].scores, scores, rtol=1e-4, atol=1e-5)
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--tokens", str(tmp_path / "tok")],
                tmp_path, tiny_clip_dir) == 0
    assert _metrics(tmp_path)["cirr/val"] == pytest.approx(expected)
    # a reference without a token is named, not skipped; tokens of another text tower are refused; no --phi too
    invert_to_store(tiny_backbone, refs[:1], embeds[:1], None, config, tmp_path / "few", progress=False)
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--tokens", str(tmp_path / "few")],
                tmp_path, tiny_clip_dir) == 2
    assert "no OTI token" in capsys.readouterr().err
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--tokens", str(tmp_path / "tok"),
                 "--precision", "fp16"], tmp_path, tiny_clip_dir) == 2
    assert "another text tower" in capsys.readouterr().err  # rounded weights: another tower
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--tokens", str(tmp_path / "tok"),
                 "--phi", "x.pt"], tmp_path, tiny_clip_dir) == 2
    assert "--tokens replaces the inversion network" in capsys.readouterr().err


def test_l2_normalize_before_phi(benchmarks, phi_file, tiny_backbone, tiny_clip_dir, tmp_path):
    """LinCIR's --l2_normalize: v = Phi(x / ‖x‖); Phi itself reads raw embeddings otherwise."""
    from zscir.models.phi import L2NormalizedInput, load_inversion_network

    phi = load_inversion_network(phi_file)
    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    expected, scores = _by_hand(tiny_backbone, split, lambda refs: phi(F.normalize(refs, dim=-1)))
    _, raw = _by_hand(tiny_backbone, split, phi)
    assert not torch.allclose(scores, raw, atol=1e-4)  # the normalisation matters here
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "c", progress=False))
    torch.testing.assert_close(ev.evaluate("phi", phi=L2NormalizedInput(phi)).scores, scores, rtol=1e-4, atol=1e-5)
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--phi", str(phi_file), "--l2-normalize"],
                tmp_path, tiny_clip_dir) == 0
    assert _metrics(tmp_path)["cirr/val"] == pytest.approx(expected)


def test_fp16_weight_rounding(benchmarks, phi_file, tiny_backbone, tiny_clip_dir, tmp_path):
    """--precision fp16: every tower weight rounded to fp16, computed in fp32 (the official evaluations' load)."""
    from zscir.models.backbone import Backbone
    from zscir.models.phi import load_inversion_network

    rounded = Backbone.load(str(tiny_clip_dir)).round_weights("fp16")
    for tower in ("text", "vision"):
        for a, b in zip(getattr(tiny_backbone, tower).parameters(), getattr(rounded, tower).parameters()):
            assert torch.equal(b, a.half().float()) and b.dtype == torch.float32
    assert rounded.vision_fingerprint() != tiny_backbone.vision_fingerprint()  # no stale fp32 features reused
    assert rounded.text_fingerprint() != tiny_backbone.text_fingerprint()
    split = load_benchmark("cirr", benchmarks["cirr"], "val")[0]
    phi = load_inversion_network(phi_file)
    expected, scores = _by_hand(rounded, split, phi)
    assert not torch.equal(scores, _by_hand(tiny_backbone, split, phi)[1])
    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--phi", str(phi_file), "--precision",
                 "fp16"], tmp_path, tiny_clip_dir) == 0
    assert _metrics(tmp_path)["cirr/val"] == pytest.approx(expected)


def test_a_template_typo_stops_before_any_encoding_and_lists_the_names(benchmarks, phi_file, tiny_clip_dir,
                                                                      tmp_path, capsys):
    from zscir.compose import TEMPLATES

    assert _cli(["--dataset", "cirr", "--root", str(benchmarks["cirr"]), "--phi", str(phi_file), "--template",
                 "pic2wrd"], tmp_path, tiny_clip_dir) == 2
    err = capsys.readouterr().err
    assert "--template" in err and "pic2wrd" in err and all(name in err for name in TEMPLATES)
    assert not (tmp_path / "cache").exists()  # nothing was encoded


def test_alpha_defaults_to_the_published_value_of_the_split_in_every_command():
    """evaluate, submit and serve leave --alpha unset; evaluate/submit take the split's published α
    (lan-lw/ComposedImageGen SEARLE_CIG/src/validate.py, generate_test_submission.py), serve the CIRR val one."""
    import inspect

    from zscir.cli import build_parser
    from zscir.commands.common import cig_alpha_of
    from zscir.recipes import DEFAULT_ALPHA
    from zscir.retrieval.service import SearchService

    parser = build_parser()
    common = ["--root", "r", "--backbone", "b", "--phi", "p", "--pseudo-targets", "d"]
    expected = {("evaluate", "cirr", "val"): 0.85, ("evaluate", "fashioniq", "val"): 0.9,
                ("submit", "cirr", "test"): 0.5, ("submit", "circo", "test"): 0.7}
    for (command, dataset, split), alpha in expected.items():
        args = parser.parse_args([command, "--dataset", dataset, "--split", split, *common])
        assert args.alpha is None and cig_alpha_of(args) == (alpha, f"published for {dataset} {split}")
    args = parser.parse_args(["evaluate", "--dataset", "circo", "--split", "val", *common])
    assert cig_alpha_of(args)[0] == DEFAULT_ALPHA and "no published value" in cig_alpha_of(args)[1]
    args = parser.parse_args(["submit", "--dataset", "cirr", *common, "--alpha", "0.6"])
    assert cig_alpha_of(args) == (0.6, "--alpha")
    assert parser.parse_args(["serve"]).alpha is None
    assert inspect.signature(SearchService).parameters["alpha"].default is None  # -> DEFAULT_ALPHA
