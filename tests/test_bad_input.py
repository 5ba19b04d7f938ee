"""Bad input through the CLI (`zscir.cli.main`): one line naming the file and what was expected, never a traceback."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import make_cirr

from zscir.cli import main


def _one_line_error(capsys, command: str, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"zscir {command}: error: "), err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def cirr(tmp_path_factory):
    return make_cirr(tmp_path_factory.mktemp("bad") / "cirr")


@pytest.fixture()
def phi_dir(tmp_path, tiny_size):
    from zscir.models.phi import Phi, save_pretrained

    return save_pretrained(Phi(tiny_size.projection_dim, tiny_size.text_hidden), tmp_path / "phi")


def _evaluate(cirr, clip_dir, tmp_path, *args):
    return main(["evaluate", "--dataset", "cirr", "--root", str(cirr), "--backbone", str(clip_dir),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *args])


def test_phi_folder_with_an_extra_config_key(cirr, tiny_clip_dir, phi_dir, tmp_path, capsys):
    config = json.loads((phi_dir / "config.json").read_text())
    (phi_dir / "config.json").write_text(json.dumps({**config, "activation": "relu"}))
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--phi", str(phi_dir)) == 2
    _one_line_error(capsys, "evaluate", "config.json", "unknown field(s) activation")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_phi_folder_with_missing_or_truncated_weights(damage, cirr, tiny_clip_dir, phi_dir, tmp_path, capsys):
    weights = phi_dir / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:200])
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--phi", str(phi_dir)) == 2
    _one_line_error(capsys, "evaluate", "model.safetensors", "missing" if damage == "missing" else "truncated")


def test_phi_folder_whose_weights_do_not_fit_its_config(cirr, tiny_clip_dir, tiny_size, phi_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from zscir.models.phi import Phi

    # a size mismatch: the config says hidden 50, the weights have the default 4P
    config = json.loads((phi_dir / "config.json").read_text())
    (phi_dir / "config.json").write_text(json.dumps({**config, "hidden_dim": 50}))
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--phi", str(phi_dir)) == 2
    hidden = 4 * tiny_size.projection_dim
    _one_line_error(capsys, "evaluate", f"layers.0.weight is [{hidden}, {tiny_size.projection_dim}] in the file, "
                                        f"[50, {tiny_size.projection_dim}] expected")
    # a missing layer
    (phi_dir / "config.json").write_text(json.dumps(config))
    state = load_file(str(phi_dir / "model.safetensors"))
    del state["layers.6.weight"]
    save_file(state, str(phi_dir / "model.safetensors"))
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--phi", str(phi_dir)) == 2
    _one_line_error(capsys, "evaluate", "missing layers.6.weight")
    # and the published format with a missing layer
    published = {k: v for k, v in Phi(tiny_size.projection_dim, tiny_size.text_hidden).state_dict().items()
                 if not k.startswith("layers.3.")}
    torch.save({"Phi": published}, tmp_path / "phi.pt")
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--phi", str(tmp_path / "phi.pt")) == 2
    _one_line_error(capsys, "evaluate", "missing layers.3.weight")


def test_corrupt_or_pickled_text_encoder(cirr, tiny_clip_dir, tmp_path, capsys):
    corrupt = tmp_path / "rtd.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--method", "text", "--text-encoder", str(corrupt)) == 2
    _one_line_error(capsys, "evaluate", "rtd.pt: not a readable torch checkpoint")

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    pickled = tmp_path / "evil.pt"
    torch.save({"CLIPTextModelWithProjection": Exploit()}, pickled)
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--method", "text", "--text-encoder", str(pickled)) == 2
    _one_line_error(capsys, "evaluate", "evil.pt: refused", "could run code")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["latin-1", "nested"])
def test_annotation_json_not_utf8_or_deeply_nested(kind, tiny_clip_dir, tmp_path, capsys):
    root = make_cirr(tmp_path / "cirr")
    captions = root / "captions" / "cap.rc2.val.json"
    if kind == "latin-1":
        records = json.loads(captions.read_text())
        records[0]["caption"] = "is a café instead"
        captions.write_bytes(json.dumps(records, ensure_ascii=False).encode("latin-1"))
        expected = "not UTF-8"
    else:
        captions.write_text("[" * 50_000 + "]" * 50_000)
        expected = "nested deeper than"
    assert _evaluate(root, tiny_clip_dir, tmp_path, "--method", "image") == 2
    _one_line_error(capsys, "evaluate", "cap.rc2.val.json", expected)
    assert main(["check-data", "--dataset", "cirr", "--root", str(root), "--split", "val"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "cap.rc2.val.json" in captured.out and expected in captured.out
    assert "incomplete" in captured.out


def test_train_rtd_without_accelerate(tmp_path, tiny_clip_dir, phi_dir, monkeypatch, capsys):
    triplets = tmp_path / "t.jsonl"
    triplets.write_text(json.dumps({"reference_caption": "a", "conditioning_caption": "b",
                                    "target_caption": "c"}) + "\n")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now fails like an absent package
    code = main(["train-rtd", "--triplets", str(triplets), "--backbone", str(tiny_clip_dir), "--phi", str(phi_dir),
                 "--output-dir", str(tmp_path / "run")])
    assert code == 2
    _one_line_error(capsys, "train-rtd", "accelerate is not installed", "zscir[train]")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_on_a_cpu_torch(cirr, tiny_clip_dir, tmp_path, capsys):
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--method", "image", "--device", "cuda") == 2
    _one_line_error(capsys, "evaluate", "'cuda'", "use cpu")
    assert _evaluate(cirr, tiny_clip_dir, tmp_path, "--method", "image", "--device", "gpu0") == 2
    _one_line_error(capsys, "evaluate", "'gpu0' is not a device name")


def test_submit_on_a_gallery_smaller_than_k(tiny_clip_dir, tmp_path, capsys):
    root = make_cirr(tmp_path / "cirr")
    split_file = root / "image_splits" / "split.rc2.test1.json"
    names = json.loads(split_file.read_text())
    keep = dict(list(names.items())[:20])  # every query's reference and set members stay
    split_file.write_text(json.dumps(keep))
    records = json.loads((root / "captions" / "cap.rc2.test1.json").read_text())
    assert all(r["reference"] in keep and all(m in keep for m in r["img_set"]["members"]) for r in records)
    code = main(["submit", "--dataset", "cirr", "--root", str(root), "--backbone", str(tiny_clip_dir), "--method",
                 "image", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sub")])
    assert code == 2
    _one_line_error(capsys, "submit", "only 19 images", "expects 50 per query")


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path, tiny_clip_dir, capsys):
    from zscir.data.images import load_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode == "I;16"
    eight = np.rint(ramp / 257.0).astype(np.uint8)
    Image.fromarray(eight).convert("RGB").save(folder / "eight.png")
    Image.open(folder / "deep.png").convert("RGB").save(folder / "clipped.png")  # what PIL alone gives
    loaded = np.asarray(load_image(folder / "deep.png"))
    assert loaded.shape == (32, 32, 3) and (loaded == 255).mean() < 0.01
    assert np.array_equal(loaded, np.asarray(load_image(folder / "eight.png")))
    # through the CLI: the 16-bit file and its 8-bit twin are indexed to the same vector
    assert main(["index", "--images", str(folder), "--out", str(tmp_path / "idx"), "--backbone",
                 str(tiny_clip_dir)]) == 0
    from safetensors import safe_open

    rows = {}
    for chunk in (tmp_path / "idx" / "chunks").glob("chunk-*.safetensors"):
        with safe_open(str(chunk), "pt") as f:
            paths, feats = json.loads(f.metadata()["paths"]), f.get_tensor("features")
        rows.update(zip(paths, feats))
    assert torch.allclose(rows["deep.png"], rows["eight.png"], atol=1e-5)
    assert not torch.allclose(rows["deep.png"], rows["clipped.png"], atol=1e-2)
