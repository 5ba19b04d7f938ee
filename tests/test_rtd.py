"""RTD: NT-Xent against a loop from the definition, gradients only into ψ', one frozen encoding per text,
validation on image features encoded once, the saved tower in both formats."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from zscir.errors import DataError
from zscir.models.phi import Phi
from zscir.training.rtd import (
    RTDConfig,
    RTDTask,
    Triplet,
    nt_xent,
    prepare_rtd_data,
    read_triplets,
    rtd_validator,
    train_rtd,
)

TRIPLETS = [
    Triplet("a red circle", "is blue", "a blue circle"),
    Triplet("a small blue square", "make the square green", "a small green square"),
    Triplet("a red circle", "add a star", "a red circle and a star"),  # T_r repeated: encoded once
    Triplet("a white background", "change the background to black", "a black background"),
    Triplet("a yellow hexagon", "move the hexagon to the middle", "a yellow hexagon in the center"),
    Triplet("a green triangle", "turn the triangle into a square", "a green square"),
]


def slow_nt_xent(q, t, tau):
    """−log(exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ)) averaged over the 2N vectors, written as loops."""
    z = [v / v.norm() for v in torch.cat([q, t]).double()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -(float(z[i] @ z[partner]) / tau - math.log(denom))
    return total / n2


def test_nt_xent_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for tau in (0.07, 0.5):
        assert abs(nt_xent(q, t, tau).item() - slow_nt_xent(q, t, tau)) < 1e-4
    # a row's own similarity must not be in its denominator: with it, the value changes
    z = torch.nn.functional.normalize(torch.cat([q, t]), dim=-1)
    with_self = torch.nn.functional.cross_entropy(z @ z.T / 0.07, torch.cat([torch.arange(6, 12), torch.arange(6)]))
    assert abs(with_self.item() - nt_xent(q, t, 0.07).item()) > 1e-3


@pytest.fixture()
def phi(tiny_backbone):
    torch.manual_seed(1)
    return Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size).eval().requires_grad_(False)


def test_each_frozen_text_encoded_once(tiny_backbone):
    encoded = []
    original = tiny_backbone.encode_composed

    def counting(texts, *a, **k):
        encoded.extend(texts)
        return original(texts, *a, **k)

    tiny_backbone.encode_composed = counting
    data = prepare_rtd_data(tiny_backbone, TRIPLETS, progress=False)
    distinct = {t.reference for t in TRIPLETS} | {t.target for t in TRIPLETS}
    assert sorted(encoded) == sorted(distinct)  # "a red circle" once, although it is T_r twice
    tiny_backbone.encode_composed = original
    assert torch.allclose(data.reference_embeds[0], data.reference_embeds[2])
    expected = tiny_backbone.text(input_ids=tiny_backbone.tokenize([TRIPLETS[3].target])).text_embeds[0]
    assert torch.allclose(data.target_embeds[3], expected, atol=1e-5)


def test_loss_from_definition_and_gradients_only_into_the_copy(tiny_backbone, phi):
    config = RTDConfig()
    data = prepare_rtd_data(tiny_backbone, TRIPLETS, progress=False)
    task = RTDTask(tiny_backbone, phi, data, config)
    rows = [0, 1, 3]
    torch.manual_seed(5)
    loss = task.loss(task.encoder, task.batch(rows, torch.device("cpu")))
    # the same step from the definition, texts encoded here from scratch
    torch.manual_seed(5)
    tr = [TRIPLETS[i] for i in rows]
    e_r = tiny_backbone.encode_text([t.reference for t in tr])
    e_t = tiny_backbone.encode_text([t.target for t in tr])
    u = torch.rand(3, 1)
    v = phi(e_r + 0.5 * u * torch.randn_like(e_r))
    tower = task.encoder.tower
    q = tiny_backbone.encode_composed([f"a photo of $ that {t.conditioning}" for t in tr], v, text_tower=tower)
    q_plain = tiny_backbone.encode_composed(["a photo of $"] * 3, v, text_tower=tower)
    expected = slow_nt_xent(torch.cat([q.text_embeds, q_plain.text_embeds]).detach(), torch.cat([e_t, e_r]), 0.07)
    assert abs(loss.item() - expected) < 1e-4
    loss.backward()
    assert all(p.grad is None for p in tiny_backbone.text.parameters())
    assert all(p.grad is None for p in phi.parameters())
    grads = [p.grad for p in tower.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert tower is not tiny_backbone.text


def _tiny_cirr_split(folder):
    from zscir.data.records import CIRSplit, Query

    colours = ["red", "blue", "green", "yellow", "white", "black", "purple", "orange"]
    images = {}
    for i, c in enumerate(colours):
        path = folder / f"img{i}.png"
        Image.new("RGB", (20, 20), c).save(path)
        images[f"img{i}"] = path
    names = list(images)
    queries = [Query(f"q{i}", names[i], (f"is {colours[(i + 1) % 8]} instead",), (names[(i + 1) % 8],),
                     (names[(i + 1) % 8], names[(i + 2) % 8], names[(i + 3) % 8])) for i in range(5)]
    return CIRSplit("cirr", "cirr/val", images, names, queries)


def test_train_rtd_validates_on_cached_images_and_saves_both_formats(tiny_backbone, phi, tmp_path):
    from zscir.models.text_tower import load_text_tower
    from zscir.retrieval.features import FeatureCache
    from zscir.training.validation import CIRValidator

    calls = {"pixels": 0, "frozen_text_layers": 0}
    original = tiny_backbone.encode_pixels

    def counting(pixels):
        calls["pixels"] += 1
        return original(pixels)

    tiny_backbone.encode_pixels = counting
    validator = CIRValidator(tiny_backbone, [_tiny_cirr_split(tmp_path)], phi=phi,
                             cache=FeatureCache(tmp_path / "features", progress=False))
    after_build = calls["pixels"]
    assert after_build >= 1
    before = {k: v.clone() for k, v in tiny_backbone.text.state_dict().items()}
    seen = []

    def validate(tower):
        seen.append(tower.training)
        return rtd_validator(validator)(tower)

    config = RTDConfig(max_steps=3, batch_size=2, validate_every=1, checkpoint_every=3, lr=1e-3, cpu=True,
                       report_to="none", progress=False)
    tower = train_rtd(tiny_backbone, phi, TRIPLETS, config, tmp_path / "run", validate=validate)
    assert calls["pixels"] == after_build  # three validations, no image re-encoded
    assert seen == [False, False, False]
    assert all(torch.equal(v, tiny_backbone.text.state_dict()[k]) for k, v in before.items())  # ψ untouched
    best = tmp_path / "run" / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    assert {"R@1", "Rs@1", "step"} <= set(metrics)
    from_folder = load_text_tower(best, like=tiny_backbone.text)
    from_file = load_text_tower(best / "rtd_text_encoder.pt", like=tiny_backbone.text)
    for k, v in tower.state_dict().items():
        assert torch.equal(v, from_folder.state_dict()[k]) and torch.equal(v, from_file.state_dict()[k])
    assert any(not torch.equal(v, before[k]) for k, v in tower.state_dict().items())  # it did train
    # the validator's score of the returned tower is the recorded best
    assert abs(validator(text_tower=tower)["R@1"] - metrics["R@1"]) < 1e-6


def test_read_triplets_skips_bad_records(tmp_path):
    good = {"reference_caption": "a red circle", "conditioning_caption": "is blue.", "target_caption": "a blue one"}
    path = tmp_path / "t.jsonl"
    empty_tc = json.dumps({**good, "conditioning_caption": " . "})  # empty once stripped: skipped, located
    path.write_text("\n".join([empty_tc] + [json.dumps(good)] * 40
                              + ["", "{broken", json.dumps({**good, "target_caption": ""})]))
    triplets, summary = read_triplets(path)
    assert len(triplets) == 40 and "4 skipped" in summary
    assert str(path) in summary and "line 1: missing or empty 'conditioning_caption'" in summary
    assert triplets[0] == Triplet("a red circle", "is blue", "a blue one")  # T_c cleaned like a query caption
    as_list = tmp_path / "t.json"
    as_list.write_text(json.dumps([good, good]))
    assert len(read_triplets(as_list)[0]) == 2
    path.write_text("\n".join([json.dumps(good)] * 3 + ["{broken"] * 2))
    with pytest.raises(DataError, match="bad"):
        read_triplets(path)


def test_cli_train_phi_then_train_rtd(tiny_clip_dir, tmp_path, capsys):
    from zscir.cli import main
    from zscir.models.phi import load_inversion_network

    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(["a red circle on a white background", "a small blue square", "a green star"] * 3))
    def common(steps=2):
        return ["--backbone", str(tiny_clip_dir), "--batch-size", "4", "--max-steps", str(steps), "--no-progress",
                "--cpu"]

    assert main(["train-phi", "--corpus", str(corpus), "--output-dir", str(tmp_path / "phi"), *common()]) == 0
    assert load_inversion_network(tmp_path / "phi" / "final" / "phi.pt").config["output_dim"] == 32
    triplets = tmp_path / "t.jsonl"
    triplets.write_text("\n".join(json.dumps({"reference_caption": t.reference, "conditioning_caption": t.conditioning,
                                              "target_caption": t.target}) for t in TRIPLETS))
    args = ["train-rtd", "--triplets", str(triplets), "--phi", str(tmp_path / "phi" / "final"),
            "--output-dir", str(tmp_path / "rtd"), "--set", "temperature=0.1"]
    assert main(args + common()) == 0
    assert json.loads((tmp_path / "rtd" / "config.json").read_text())["temperature"] == 0.1
    assert (tmp_path / "rtd" / "final" / "rtd_text_encoder.pt").is_file()
    assert main(args + common()) == 2  # checkpoints exist: refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + common(4) + ["--resume"]) == 0  # 2 more steps
    saved = json.loads((tmp_path / "rtd" / "final" / "metrics.json").read_text())
    assert saved["step"] == 4
