"""Search service: indexing (incremental, resumable), search vs brute force, CLI, JSON API, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import stale_temp

from zscir.errors import DataError, ZscirError

CAPTION = "make the circle green"


def _png(path, seed: int, size: int = 20):
    """A random RGB image (distinct per seed, so no two gallery vectors tie)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture()
def gallery(tmp_path):
    """7 readable images (png, jpg, webp, nested, upper-case extension), a corrupt .png and a .txt."""
    root = tmp_path / "photos"
    for i, name in enumerate(["a.png", "b.png", "c.jpg", "sub/d.png", "sub/deeper/e.webp", "F.PNG", "g.jpeg"]):
        _png(root / name, i)
    (root / "broken.png").write_bytes(b"this is not a png")
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "h.png", 99)
    return root


@pytest.fixture()
def phi_dir(tmp_path, tiny_size):
    """A tiny random Phi (P=24 → H=32) saved as a zscir folder."""
    from zscir.models.phi import Phi

    torch.manual_seed(0)
    Phi(tiny_size.projection_dim, tiny_size.text_hidden, 48).save_pretrained(tmp_path / "phi")
    return tmp_path / "phi"


def _index(gallery, backbone, out, **kw):
    from zscir.retrieval.indexer import index_folder

    return index_folder(gallery, backbone, out, progress=False, **kw)


# ---- indexing ---------------------------------------------------------------------------------------
def test_list_images_recursive_extensions_hidden_and_index_excluded(gallery):
    from zscir.data.images import list_images

    _png(gallery / "idx" / "chunk.png", 5)  # an index folder inside the gallery is not indexed
    found = list_images(gallery, exclude=gallery / "idx")
    assert found == sorted(["F.PNG", "a.png", "b.png", "broken.png", "c.jpg", "g.jpeg", "sub/d.png",
                            "sub/deeper/e.webp"])


def test_index_skips_unreadable_and_writes_manifest(gallery, tiny_backbone, tmp_path):
    from zscir.retrieval.indexer import load_ids, read_manifest

    report = _index(gallery, tiny_backbone, tmp_path / "idx", chunk_size=3)
    assert (report.count, report.encoded, report.reused, report.removed) == (7, 7, 0, 0)
    assert list(report.failed) == ["broken.png"] and "cannot decode" in report.failed["broken.png"]
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["count"] == 7 and manifest["dim"] == tiny_backbone.projection_dim
    assert manifest["vision_fingerprint"] == tiny_backbone.vision_fingerprint()
    assert "broken.png" in manifest["failed"]
    assert load_ids(tmp_path / "idx") == ["F.PNG", "a.png", "b.png", "c.jpg", "g.jpeg", "sub/d.png",
                                          "sub/deeper/e.webp"]


def test_incremental_rerun_encodes_only_new_and_changed_files(gallery, tiny_backbone, tmp_path):
    from zscir.retrieval.indexer import load_ids

    out = tmp_path / "idx"
    _index(gallery, tiny_backbone, out, chunk_size=3)
    again = _index(gallery, tiny_backbone, out, chunk_size=3)
    assert (again.encoded, again.reused, again.removed) == (0, 7, 0)

    _png(gallery / "new1.png", 10)
    _png(gallery / "sub" / "new2.jpg", 11)
    (gallery / "b.png").unlink()
    _png(gallery / "a.png", 12, size=24)  # changed content (size differs): re-encoded
    report = _index(gallery, tiny_backbone, out, chunk_size=3)
    assert (report.encoded, report.removed, report.count) == (3, 1, 8)
    ids = load_ids(out)
    assert "b.png" not in ids and {"new1.png", "sub/new2.jpg"} <= set(ids)
    # the updated index equals one built from scratch
    fresh = _index(gallery, tiny_backbone, tmp_path / "fresh")
    assert fresh.encoded == 8
    _assert_same_index(out, tmp_path / "fresh")


def _assert_same_index(a, b):
    from zscir.retrieval.index import load_index
    from zscir.retrieval.indexer import load_ids, read_manifest

    assert load_ids(a) == load_ids(b)
    va = load_index(a / read_manifest(a)["snapshot"]).vectors
    vb = load_index(b / read_manifest(b)["snapshot"]).vectors
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)


def test_interrupted_run_keeps_finished_chunks_and_resumes(gallery, tiny_backbone, tmp_path):
    out = tmp_path / "idx"

    def interrupt(done):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _index(gallery, tiny_backbone, out, chunk_size=2, on_chunk=interrupt)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "chunks").glob("chunk-*.safetensors"))) == 2
    # a half-written temp file from the kill is ignored, then removed
    leftover = stale_temp(out / "chunks" / "chunk-000002.safetensors")
    leftover.write_bytes(b"partial")
    resumed = _index(gallery, tiny_backbone, out, chunk_size=2)
    # chunk 1 = [F.PNG, a.png], chunk 2 = [b.png, broken.png] → 3 images were already encoded
    assert (resumed.encoded, resumed.reused, resumed.count) == (4, 3, 7)
    assert not leftover.exists()
    _index(gallery, tiny_backbone, tmp_path / "fresh")
    _assert_same_index(out, tmp_path / "fresh")


def test_other_weights_reencode_everything(gallery, tiny_backbone, tmp_path):
    out = tmp_path / "idx"
    _index(gallery, tiny_backbone, out)
    with torch.no_grad():
        tiny_backbone.vision.visual_projection.weight.mul_(2.0)
    report = _index(gallery, tiny_backbone, out)
    assert report.encoded == 7 and report.reused == 0


# ---- search -----------------------------------------------------------------------------------------
def _brute_force(backbone, gallery, ids, query):
    """Rank freshly encoded gallery images by cosine with the query (full sort, from the definition)."""
    from zscir.data.images import load_image

    feats = F.normalize(backbone.encode_image([load_image(gallery / rel) for rel in ids]), dim=-1)
    scores = (feats @ query[0]).tolist()
    order = sorted(range(len(ids)), key=lambda i: -scores[i])
    return [ids[i] for i in order], [scores[i] for i in order]


@pytest.mark.parametrize("backend", ["exact", "flat"])
def test_search_equals_brute_force_for_every_method(gallery, tiny_backbone, phi_dir, tmp_path, backend):
    from zscir.compose import compose_queries
    from zscir.data.images import load_image
    from zscir.models.phi import load_inversion_network
    from zscir.retrieval.service import SearchService

    out = tmp_path / "idx"
    _index(gallery, tiny_backbone, out, backend=backend)
    service = SearchService(out, phi=phi_dir, backbone=tiny_backbone)
    assert service.methods == ["image", "text", "sum", "phi"]
    ids = service.ids
    ref = gallery / "sub" / "d.png"
    raw = tiny_backbone.encode_image([load_image(ref)])
    phi = load_inversion_network(phi_dir)
    image_q = F.normalize(raw, dim=-1)
    text_q = F.normalize(tiny_backbone.encode_text([CAPTION]), dim=-1)
    with torch.no_grad():
        expected = {
            "image": image_q,
            "text": text_q,
            "sum": F.normalize(image_q + text_q, dim=-1),
            "phi": compose_queries(tiny_backbone, phi(raw), [(CAPTION,)]),
        }
    for method, query in expected.items():
        hits = service.search(ref, CAPTION + ".", method=method, k=len(ids))
        names, scores = _brute_force(tiny_backbone, gallery, ids, query)
        assert [h.relpath for h in hits] == names, method
        assert [h.rank for h in hits] == list(range(1, len(ids) + 1))
        torch.testing.assert_close(torch.tensor([h.score for h in hits]), torch.tensor(scores), atol=1e-4, rtol=0)
        assert all(h.path == str(gallery / h.relpath) for h in hits)
    top = service.search(ref, None, method="image", k=3)
    assert len(top) == 3 and top[0].relpath == "sub/d.png" and top[0].score == pytest.approx(1.0, abs=1e-5)


def test_service_bad_input_messages(gallery, tiny_backbone, phi_dir, tmp_path):
    from zscir.retrieval.service import SearchService, check_caption

    out = tmp_path / "idx"
    _index(gallery, tiny_backbone, out)
    service = SearchService(out, phi=phi_dir, backbone=tiny_backbone)
    ref = gallery / "a.png"
    with pytest.raises(DataError, match="empty caption"):
        service.search(ref, "   ", "phi")
    with pytest.raises(DataError, match="no content words"):
        service.search(ref, "the and of it.", "sum")
    with pytest.raises(DataError, match="not a readable image"):
        service.search(b"hello, not an image", CAPTION, "phi")
    with pytest.raises(DataError, match="cannot decode"):
        service.search(gallery / "broken.png", CAPTION, "phi")
    with pytest.raises(DataError, match="no reference image"):
        service.search(None, CAPTION, "phi")
    with pytest.raises(ZscirError, match="unknown method"):
        service.search(ref, CAPTION, "nope")
    assert check_caption("  is blue instead. ") == "is blue instead"
    no_phi = SearchService(out, backbone=tiny_backbone)
    assert "phi" not in no_phi.methods
    with pytest.raises(ZscirError, match="needs an inversion network"):
        no_phi.search(ref, CAPTION, "phi")


def test_service_refuses_other_backbone_weights(gallery, tiny_backbone, tmp_path):
    from zscir.errors import ModelLoadError
    from zscir.retrieval.service import SearchService

    _index(gallery, tiny_backbone, tmp_path / "idx")
    with torch.no_grad():
        tiny_backbone.vision.visual_projection.weight.add_(0.1)
    with pytest.raises(ModelLoadError, match="rebuild"):
        SearchService(tmp_path / "idx", backbone=tiny_backbone)


# ---- CLI --------------------------------------------------------------------------------------------
def test_cli_index_then_search(gallery, tiny_clip_dir, phi_dir, tmp_path, capsys):
    from zscir.cli import main

    out = tmp_path / "idx"
    assert main(["index", "--images", str(gallery), "--backbone", str(tiny_clip_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 images indexed" in printed and "skipped broken.png" in printed
    assert main(["index", "--images", str(gallery), "--backbone", str(tiny_clip_dir), "--out", str(out)]) == 0
    assert "encoded 0, reused 7" in capsys.readouterr().out

    ref = gallery / "c.jpg"
    assert main(["search", "--index", str(out), "--image", str(ref), "--method", "image", "-k", "3", "--json",
                 "--keep-reference"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["hits"][0]["relpath"] == "c.jpg"
    # by default the reference itself is left out, as on the web page
    assert main(["search", "--index", str(out), "--image", str(ref), "--method", "image", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and "c.jpg" not in [h["relpath"] for h in hits]
    assert main(["search", "--index", str(out), "--image", str(ref), "--text", CAPTION, "--phi", str(phi_dir),
                 "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "1" and lines[0].split()[2].startswith(str(gallery))


@pytest.mark.parametrize("argv_tail, message", [
    (["--text", "   "], "empty caption"),
    (["--text", "the of and"], "no content words"),
    (["--text", CAPTION, "--image", "NOTES"], "cannot decode"),
    (["--text", CAPTION, "--index", "MISSING"], "does not exist"),
    (["--text", CAPTION, "--method", "phi"], "needs --phi"),
])
def test_cli_bad_input_is_one_clear_line(gallery, tiny_clip_dir, tmp_path, capsys, argv_tail, message):
    from zscir.cli import main

    out = tmp_path / "idx"
    assert main(["index", "--images", str(gallery), "--backbone", str(tiny_clip_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    argv = ["search", "--index", str(out), "--image", str(gallery / "a.png"), "--method", "sum"] + argv_tail
    argv = [str(gallery / "notes.txt") if a == "NOTES" else str(tmp_path / "nowhere") if a == "MISSING" else a
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_index_folder_message(tmp_path):
    from zscir.retrieval.service import load_service

    with pytest.raises(ZscirError, match="does not exist; build it with `zscir index"):
        load_service(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZscirError, match="has no manifest.json"):
        load_service(tmp_path / "empty")


def test_default_serve_without_world_says_run_demo(tmp_path, monkeypatch):
    from zscir.demo.world_index import ensure_world_index

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ZscirError, match="run `zscir demo`"):
        ensure_world_index(progress=False)
    assert not os.path.exists(tmp_path / "cache" / "indexes")


# ---- CIG pseudo targets -----------------------------------------------------------------------------
def test_pseudo_target_is_fused_like_the_definition(gallery, tiny_backbone, phi_dir, tmp_path):
    """q = normalize(α·f_ref + (1−α)·f_gen) with f_gen composed from Phi(generated image) (METHODS.md §5)."""
    from zscir.compose import compose_queries
    from zscir.data.images import load_image
    from zscir.models.phi import load_inversion_network
    from zscir.retrieval.service import SearchService

    out = tmp_path / "idx"
    _index(gallery, tiny_backbone, out)
    generated = load_image(gallery / "g.jpeg")
    calls = []

    def generator(reference, caption):
        calls.append(caption)
        return generated

    alpha = 0.6
    service = SearchService(out, phi=phi_dir, backbone=tiny_backbone, generator=generator, alpha=alpha)
    ref = gallery / "a.png"
    result = service.run(ref, CAPTION, "phi", k=7)
    assert calls == [CAPTION] and result.pseudo_target is generated
    phi = load_inversion_network(phi_dir)
    with torch.no_grad():
        f_ref = compose_queries(tiny_backbone, phi(tiny_backbone.encode_image([load_image(ref)])), [(CAPTION,)])
        f_gen = compose_queries(tiny_backbone, phi(tiny_backbone.encode_image([generated])), [(CAPTION,)])
    query = alpha * f_ref + (1 - alpha) * f_gen
    query = query / query.norm()
    names, scores = _brute_force(tiny_backbone, gallery, service.ids, query)
    assert [h.relpath for h in result.hits] == names
    torch.testing.assert_close(torch.tensor([h.score for h in result.hits]), torch.tensor(scores), atol=1e-4, rtol=0)
    # a generator that gives up (every render dark) leaves the plain Phi query
    service.generator = lambda reference, caption: None
    plain = SearchService(out, phi=phi_dir, backbone=tiny_backbone)
    assert [h.relpath for h in service.search(ref, CAPTION, "phi", 7)] == \
        [h.relpath for h in plain.search(ref, CAPTION, "phi", 7)]


def test_cig_generator_on_a_tiny_sdxl(gallery, tiny_backbone, tiny_clip_dir, phi_dir, tmp_path):
    pytest.importorskip("diffusers")
    from zscir.generation.cig import load_generator
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.generation.options import GenerationConfig
    from zscir.generation.tiny import build_tiny_sdxl
    from zscir.models.phi import load_inversion_network
    from zscir.retrieval.service import SearchService, cig_generator

    _index(gallery, tiny_backbone, tmp_path / "idx")
    phi = load_inversion_network(phi_dir)
    pipe = load_generator(build_tiny_sdxl(tiny_clip_dir, None, tmp_path / "sdxl"))
    conditioner = ComposedConditioner(tiny_backbone, phi, tiny_backbone, phi)
    generate = cig_generator(pipe, conditioner, GenerationConfig(steps=2, height=32, width=32, dark_threshold=-1))
    service = SearchService(tmp_path / "idx", phi=phi, backbone=tiny_backbone, generator=generate)
    result = service.run(gallery / "a.png", CAPTION, "phi", k=3)
    assert result.pseudo_target is not None and result.pseudo_target.size == (32, 32)
    assert len(result.hits) == 3
