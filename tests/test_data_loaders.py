"""Benchmark loaders on the real sample annotation files and on tiny generated layouts; image checks; check-data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from zscir.cli import main as cli_main
from zscir.data.images import check_images, load_image
from zscir.data.records import load_benchmark, prepare_caption
from zscir.errors import DataError, ZscirError

FORMATS = Path(__file__).parent / "data" / "formats"


def png(path: Path, color=(200, 10, 10), size=(5, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def make_cirr(root: Path, nested: bool = False) -> Path:
    """A complete 5-image CIRR val layout with 2 queries (optionally the official nested cirr/ folder)."""
    ann = root / "cirr" if nested else root
    names = [f"dev-{i}-0-img0" for i in range(5)]
    for i, n in enumerate(names):
        png(root / "dev" / f"{n}.png", color=(40 * i, 0, 0))
    write_json(ann / "image_splits" / "split.rc2.val.json", {n: f"./dev/{n}.png" for n in names})
    members = names[:5] + [names[0]]
    write_json(ann / "captions" / "cap.rc2.val.json", [
        {"pairid": 7, "reference": names[0], "target_hard": names[1], "target_soft": {names[1]: 1.0},
         "caption": "Has two dogs. ", "img_set": {"id": 1, "members": members}},
        {"pairid": 8, "reference": names[2], "target_hard": names[3], "target_soft": {},
         "caption": "is red?", "img_set": {"id": 1, "members": members}},
    ])
    return root


# ---- the sample files of the real benchmarks ----------------------------------------------------


def test_cirr_samples():
    (val,) = load_benchmark("cirr", FORMATS / "cirr", "val", strict=False)
    assert (val.dataset, val.name) == ("cirr", "cirr/val")
    assert val.gallery == ["dev-244-0-img0", "dev-1028-1-img1", "dev-430-3-img0"]
    assert val.images["dev-244-0-img0"] == FORMATS / "cirr" / "dev" / "dev-244-0-img0.png"
    q = val.queries[0]
    assert (q.query_id, q.reference, q.targets, q.captions) == (
        "12060", "dev-244-0-img0", ("dev-1028-1-img1",), ("show three bottles of soft drink",))
    assert len(q.group) == 6 and q.shared_concept is None
    assert val.has_targets
    (test,) = load_benchmark("cirr", FORMATS / "cirr", "test", strict=False)  # "test" means test1
    assert test.name == "cirr/test1" and not test.has_targets and all(not q.targets for q in test.queries)
    # the samples are excerpts: a strict load reports the names its image table lacks
    with pytest.raises(DataError, match="dev-63-0-img1"):
        load_benchmark("cirr", FORMATS / "cirr", "val")


def test_fashioniq_samples():
    splits = load_benchmark("fashioniq", FORMATS / "fashioniq", "val", strict=False)
    assert [s.name for s in splits] == ["fashioniq/dress/val", "fashioniq/shirt/val", "fashioniq/toptee/val"]
    ids = [q.query_id for s in splits for q in s.queries]
    assert len(ids) == len(set(ids)) and ids[0] == "dress/0"
    dress = splits[0]
    assert dress.gallery == ["B009PMCJLW", "B0084Y8XIU", "B007HNF4QI"]
    q = dress.queries[0]
    assert (q.reference, q.targets) == ("B005X4PL1G", ("B0084Y8XIU",))
    assert q.captions == ("is shiny and silver with shorter sleeves", "fit and flare")
    assert dress.images["B005X4PL1G"] == FORMATS / "fashioniq" / "images" / "B005X4PL1G.jpg"
    (toptee,) = load_benchmark("fashioniq", FORMATS / "fashioniq", "test", categories=["toptee"])
    assert toptee.queries[0].captions == ("the tank top is blue with a character of a woman", "has no sleeves")
    assert not toptee.has_targets
    (dress_test,) = load_benchmark("fashioniq", FORMATS / "fashioniq", "test", categories=["dress"])
    assert dress_test.queries[0].captions[0] == "yello and more flowing"  # leading space stripped


def test_circo_samples(tmp_path):
    root = tmp_path / "circo"
    shutil.copytree(FORMATS / "circo", root)
    with pytest.raises(DataError, match="image_info_unlabeled2017.json is missing"):
        load_benchmark("circo", root, "val")
    ids = [271520, 355099, 528417, 534704, 283001, 574778, 207836, 420715, 2097, 295260, 154188, 459306,
           441068, 469312, 281438, 251485, 232621]
    write_json(root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
               {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]})
    (val,) = load_benchmark("circo", root, "val")
    assert val.gallery == [str(i) for i in ids]
    assert val.images["2097"] == root / "COCO2017_unlabeled/unlabeled2017/000000002097.jpg"
    q = val.queries[2]
    assert (q.query_id, q.reference) == ("2", "2097")
    assert q.targets == ("295260", "154188", "459306", "441068", "469312")  # target_img_id first
    assert q.shared_concept == "hairdressing comb and scissors"
    (test,) = load_benchmark("circo", root, "test")
    assert [q.query_id for q in test.queries] == ["0", "1", "2"] and not test.has_targets


def test_captions_are_prepared_as_the_official_protocols_do():
    # FashionIQ: strip('.?, ') at both ends; CIRR and CIRCO: as written (METHODS §1)
    assert prepare_caption("fashioniq", " is black with no sleeves. ") == "is black with no sleeves"
    assert prepare_caption("fashioniq", "Is it red?,. ") == "Is it red"
    assert prepare_caption("fashioniq", "keeps a.b inside") == "keeps a.b inside"
    for dataset in ("cirr", "circo"):
        assert prepare_caption(dataset, "  Has two dogs. ") == "  Has two dogs. "
        assert prepare_caption(dataset, " ") == " "
    # the option that keeps zscir 0.1's cleaning, for every dataset
    assert prepare_caption("cirr", "  Has two dogs. ", "strip") == "Has two dogs"
    with pytest.raises(ZscirError, match="official, strip"):
        prepare_caption("cirr", "x", "lower")


def _with_empty_caption(tmp_path, dataset):
    """The sample files plus one record with an empty caption, as the real files hold them."""
    root = tmp_path / dataset
    shutil.copytree(FORMATS / dataset, root)
    if dataset == "cirr":  # real CIRR test1: pairid 27098's caption is a single space
        path = root / "captions" / "cap.rc2.test1.json"
        records = json.loads(path.read_text())
        records.append(dict(records[0], pairid=27098, caption=" "))
        write_json(path, records)
        return root, "test1", path, len(records) - 1, "27098"
    if dataset == "fashioniq":  # real FashionIQ val: 1 shirt and 2 toptee pairs whose first caption is empty
        path = root / "captions" / "cap.shirt.val.json"
        records = json.loads(path.read_text())
        records.insert(1, dict(records[0], captions=["", "is darker. "]))
        write_json(path, records)
        return root, "val", path, 1, "shirt/1"
    write_json(root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
               {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (281438, 251485, 232621)]})
    path = root / "annotations" / "test.json"
    records = json.loads(path.read_text())
    records.append(dict(records[0], id=3, relative_caption=""))
    write_json(path, records)
    return root, "test", path, 3, "3"


@pytest.mark.parametrize("dataset", ["cirr", "fashioniq", "circo"])
def test_empty_captions_are_kept_counted_and_located(tmp_path, dataset):
    root, split, path, index, query_id = _with_empty_caption(tmp_path, dataset)
    units = load_benchmark(dataset, root, split, strict=False)
    unit = next(u for u in units if any(q.query_id == query_id for q in u.queries))
    query = next(q for q in unit.queries if q.query_id == query_id)
    assert query.has_empty_caption and query.source == f"{path}: record {index}"
    expected = {"cirr": (" ",), "fashioniq": ("", "is darker"), "circo": ("",)}[dataset]
    assert query.captions == expected
    note = unit.empty_caption_note()
    assert note.startswith(f"{unit.name}: 1 query with an empty caption, composed as written: ")
    assert str(path) in note and f"record {index}" in note and f"query {query_id}" in note
    assert sum(u.empty_caption_note() is not None for u in units) == 1


def test_check_data_reports_empty_captions(tmp_path, capsys):
    root = make_cirr(tmp_path / "cirr")
    path = root / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    records[1]["caption"] = " "
    write_json(path, records)
    assert cli_main(["check-data", "--dataset", "cirr", "--root", str(root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert f"note: cirr/val: 1 query with an empty caption, composed as written: {path}: record 1 (query 8)" in out
    assert out.strip().splitlines()[-1].startswith("complete, except that 1 query has an empty caption")


# ---- generated layouts with real images ---------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_cirr_generated_layout(tmp_path, nested):
    root = make_cirr(tmp_path, nested=nested)
    (val,) = load_benchmark("cirr", root, "val")
    assert [q.captions for q in val.queries] == [("Has two dogs. ",), ("is red?",)]  # CIRR: as written
    (stripped,) = load_benchmark("cirr", root, "val", caption_cleaning="strip")
    assert [q.captions for q in stripped.queries] == [("Has two dogs",), ("is red",)]
    assert all(p.is_file() for p in val.images.values())
    image = load_image(val.images[val.queries[0].reference])
    assert image.mode == "RGB" and image.size == (5, 4)
    assert check_images(val.image_paths()).ok


def test_fashioniq_png_fallback(tmp_path):
    write_json(tmp_path / "image_splits/split.dress.val.json", ["A", "B"])
    write_json(tmp_path / "captions/cap.dress.val.json", [{"candidate": "C", "target": "B", "captions": ["x.", "y"]}])
    png(tmp_path / "images/A.jpg")
    png(tmp_path / "images/B.png")
    (dress,) = load_benchmark("fashioniq", tmp_path, "val", categories=["dress"])
    assert dress.images == {"A": tmp_path / "images/A.jpg", "B": tmp_path / "images/B.png",
                            "C": tmp_path / "images/C.jpg"}
    report = check_images(dress.image_paths())
    assert report.missing == [tmp_path / "images/C.jpg"] and not report.corrupt


# ---- bad input ----------------------------------------------------------------------------------


def test_malformed_json_names_file(tmp_path):
    root = make_cirr(tmp_path)
    bad = root / "captions" / "cap.rc2.val.json"
    bad.write_text('[{"pairid": 1,')
    with pytest.raises(DataError, match=r"cap\.rc2\.val\.json: malformed JSON"):
        load_benchmark("cirr", root, "val")


@pytest.mark.parametrize("field,value,message", [
    ("caption", None, r"record 1: missing field 'caption'"),
    ("pairid", "8", r"record 1: field 'pairid' should be an integer, got str"),
    ("img_set", {"id": 1}, r"record 1: missing field 'img_set.members'"),
    ("target_hard", None, r"record 1: missing field 'target_hard'"),
])
def test_missing_or_wrong_field_names_file_record_field(tmp_path, field, value, message):
    root = make_cirr(tmp_path)
    path = root / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    if value is None:
        del records[1][field]
    else:
        records[1][field] = value
    write_json(path, records)
    with pytest.raises(DataError, match=r"cap\.rc2\.val\.json: " + message):
        load_benchmark("cirr", root, "val")


def test_other_layouts_bad_fields(tmp_path):
    write_json(tmp_path / "image_splits/split.dress.val.json", ["A"])
    write_json(tmp_path / "captions/cap.dress.val.json", [{"candidate": "A", "target": "A", "captions": "x"}])
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json: record 0: field 'captions' should be a list"):
        load_benchmark("fashioniq", tmp_path, "val", categories=["dress"])
    write_json(tmp_path / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
               {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}]})
    write_json(tmp_path / "annotations/val.json", [])
    with pytest.raises(DataError, match=r"image_info_unlabeled2017\.json: record 1: missing field 'file_name'"):
        load_benchmark("circo", tmp_path, "val")


def test_wrong_root_is_one_line(tmp_path):
    with pytest.raises(DataError) as info:
        load_benchmark("cirr", tmp_path / "nowhere", "val")
    message = str(info.value)
    assert "\n" not in message and "split.rc2.val.json is missing" in message and "does not exist" in message
    with pytest.raises(ZscirError, match="unknown split"):
        load_benchmark("cirr", tmp_path, "validation")
    with pytest.raises(ZscirError, match="unknown dataset"):
        load_benchmark("coco", tmp_path, "val")


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="nothing.png: image file not found"):
        load_image(tmp_path / "nothing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png: cannot decode image"):
        load_image(junk)
    pal = Image.new("P", (3, 3))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert load_image(tmp_path / "pal.png").mode == "RGB"


def test_check_images_finds_missing_and_corrupt(tmp_path):
    good = png(tmp_path / "a" / "good.png")
    truncated = png(tmp_path / "a" / "trunc.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:60])
    junk = tmp_path / "b" / "junk.png"
    junk.parent.mkdir()
    junk.write_bytes(b"\x00" * 32)
    missing = tmp_path / "b" / "gone.png"
    report = check_images([good, truncated, junk, missing, good], workers=2, progress=False)
    assert report.total == 4
    assert report.missing == [missing]
    assert [p for p, _ in report.corrupt] == [truncated, junk]
    line = report.summary()
    assert "1 missing" in line and "2 undecodable" in line and "gone.png" in line
    assert check_images([good, missing], decode="none").missing == [missing]


def test_check_data_command(tmp_path, capsys):
    root = make_cirr(tmp_path / "cirr")
    assert cli_main(["check-data", "--dataset", "cirr", "--root", str(root), "--split", "val"]) == 0
    assert "cirr/val: 2 queries, 5 gallery images; 5 images: all present" in capsys.readouterr().out

    (root / "dev" / "dev-4-0-img0.png").unlink()
    (root / "dev" / "dev-3-0-img0.png").write_bytes(b"garbage")
    assert cli_main(["check-data", "--dataset", "cirr", "--root", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "1 missing (e.g. " in out and "dev-4-0-img0.png" in out
    assert "1 undecodable (e.g. " in out and "dev-3-0-img0.png" in out

    # default splits: val is there, test1 annotation files are not -> reported in one line, exit 1
    assert cli_main(["check-data", "--dataset", "cirr", "--root", str(tmp_path / "cirr")]) == 1
    out = capsys.readouterr().out
    assert "cirr/test1: cirr: expected file image_splits/split.rc2.test1.json is missing" in out

    assert cli_main(["check-data", "--dataset", "circo", "--root", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_check_data_reports_inconsistent_annotations(tmp_path, capsys):
    root = make_cirr(tmp_path)
    path = root / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    records[0]["target_hard"] = "dev-99-0-img0"
    write_json(path, records)
    with pytest.raises(DataError, match="dev-99-0-img0"):
        load_benchmark("cirr", root, "val")
    assert cli_main(["check-data", "--dataset", "cirr", "--root", str(root), "--split", "val"]) == 1
    assert "1 targets missing from the gallery (e.g. 'dev-99-0-img0' (query 7))" in capsys.readouterr().out
