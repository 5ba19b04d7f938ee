"""The synthetic world: determinism, edits checked on scene graphs, hard negatives, layouts vs real samples."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path

import pytest

from zscir.data.synthetic import (
    Edit,
    Scene,
    SceneObject,
    WorldSizes,
    apply_edit,
    build_world,
    caption_corpus,
    check_edit,
    clip_pair_sampler,
    clip_pretraining_stream,
    describe_scene,
    edit_matches,
    parse_relative_caption,
    random_scene,
    relative_caption,
    render_scene,
    rtd_triplets,
    sample_edit,
    world_texts,
)
from zscir.data.synthetic.captions import MAX_CAPTION_WORDS
from zscir.data.synthetic.cirr_captions import (
    apply_changes,
    check_composite_caption,
    composite_caption,
    parse_composite_caption,
    sample_changes,
)
from zscir.data.synthetic.edits import referring_expression
from zscir.data.synthetic.layout_circo import shared_concept
from zscir.data.synthetic.vocab import BACKGROUNDS, COLOURS, SHAPES, SIZES
from zscir.errors import DataError

FORMATS = Path(__file__).parent / "data" / "formats"
SMALL = WorldSizes.small()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "w"
    build_world(root, seed=0, sizes=SMALL)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scenes(sidecar_path: Path) -> tuple[dict, dict]:
    sidecar = json.loads(sidecar_path.read_text())
    return sidecar, {name: Scene.from_dict(r["scene"]) for name, r in sidecar["images"].items()}


# ----------------------------------------------------------------- toy cases worked by hand

TWO_CIRCLES = Scene("white", (SceneObject(0, "circle", "red", "small"), SceneObject(4, "circle", "blue", "large"),
                              SceneObject(8, "star", "red", "small")))


def test_referring_expressions_disambiguate_by_hand():
    assert referring_expression(TWO_CIRCLES, 8) == "the star"
    assert referring_expression(TWO_CIRCLES, 0) == "the red circle"  # "the circle" is ambiguous
    edit = Edit("recolour", cell=0, colour="green")
    assert relative_caption(TWO_CIRCLES, edit) == "make the red circle green"
    target = apply_edit(TWO_CIRCLES, edit)
    assert target.object_at(0) == SceneObject(0, "circle", "green", "small")
    assert target.object_at(4) == TWO_CIRCLES.object_at(4)
    assert check_edit(TWO_CIRCLES, target, "make the red circle green")
    assert check_edit(TWO_CIRCLES, target, "paint the small circle green")
    assert not check_edit(TWO_CIRCLES, target, "make the circle green")  # ambiguous referent
    assert not check_edit(TWO_CIRCLES, target, "make the blue circle green")  # wrong object
    assert not check_edit(TWO_CIRCLES, target, "make the red circle pink")  # wrong value
    assert not check_edit(TWO_CIRCLES, TWO_CIRCLES, "make the red circle green")  # nothing changed


def test_edit_kinds_by_hand():
    s = TWO_CIRCLES
    moved = Scene("white", (SceneObject(2, "circle", "red", "small"),) + s.objects[1:])
    assert check_edit(s, moved, "move the red circle to the top right")
    assert check_edit(s, moved, "put the circle at the top left in the upper right corner")
    assert not check_edit(s, moved, "move the red circle to the bottom left")
    removed = Scene("white", s.objects[1:])
    assert check_edit(s, removed, "remove the red circle")
    assert not check_edit(s, removed, "remove the star")
    added = Scene("white", removed.objects + (SceneObject(3, "hexagon", "blue", "small"),))
    assert check_edit(removed, added, "add a small blue hexagon at the center left")
    assert not check_edit(removed, added, "add a small blue hexagon in the center")  # wrong cell
    assert not check_edit(removed, added, "add a large blue hexagon at the center left")  # wrong size
    assert not check_edit(removed, added, "add a small blue star at the center left")  # wrong shape
    single = Scene("black", (SceneObject(4, "square", "yellow", "small"),))
    grown = Scene("black", (SceneObject(4, "square", "yellow", "large"),))
    assert check_edit(single, grown, "make the square bigger")
    assert not check_edit(single, grown, "make the square smaller")
    two = Scene("black", (SceneObject(4, "square", "yellow", "small"), SceneObject(3, "hexagon", "blue", "small")))
    assert check_edit(single, two, "add a small blue hexagon in the middle left")
    assert check_edit(single, two, "add a blue hexagon")  # under-specified: any size, any free cell
    assert edit_matches(single, two, Edit("add", colour="blue", shape="hexagon"))
    assert check_edit(single, Scene("gray", single.objects), "change the background to gray")
    # FashionIQ-style pair of captions: two edits on different parts, both needed
    both = Scene("gray", (SceneObject(4, "star", "yellow", "small"),))
    assert check_edit(single, both, ["turn the square into a star", "make the background gray"])
    assert not check_edit(single, both, ["turn the square into a star", "turn the square into a star"])
    assert check_edit(single, both, ["the square is a star", "has a gray background"])  # FashionIQ's wording
    assert check_edit(single, grown, "the square is bigger") and not check_edit(single, grown, "the square is smaller")
    assert check_edit(single, Scene("gray", single.objects), "gray background")


def test_grammar_round_trip_and_checks_on_random_edits():
    rng = random.Random(3)
    for i in range(3000):
        scene = random_scene(rng)
        edit = sample_edit(scene, rng, underspecified_add=i % 5 == 0)
        style = ("command", "attribute")[(i // 2) % 2]  # CIRR-like commands, FashionIQ-like attribute statements
        caption = relative_caption(scene, edit, rng if i % 2 else None, style=style)
        assert parse_relative_caption(scene, caption) == edit, caption
        if edit.fully_specified:
            target = apply_edit(scene, edit)
            assert target != scene
            assert check_edit(scene, target, caption)
            assert not check_edit(target, scene, caption)
            other = sample_edit(scene, rng)
            if apply_edit(scene, other) != target:
                assert not edit_matches(scene, apply_edit(scene, other), edit)


def test_vocabulary_covers_everything_the_grammar_says():
    vocab = {w for text in world_texts() for w in text.split()}
    assert {"$", "photo", "that", "make", "remove", "add", "turn"} <= vocab
    rng = random.Random(5)
    seen = set()
    for i in range(3000):
        scene = random_scene(rng)
        edit = sample_edit(scene, rng, underspecified_add=i % 3 == 0)
        caption = describe_scene(scene, rng).split()
        assert len(caption) <= MAX_CAPTION_WORDS
        seen.update(caption)
        seen.update(_words(relative_caption(scene, edit, rng)))
        seen.update(shared_concept(scene, edit).split())
    for t in rtd_triplets(1, 200):
        seen.update(_words(" ".join(t.values())))
    for c in caption_corpus(1, 200):
        seen.update(c.split())
    assert seen - {_strip(w) for w in vocab} == set()
    assert all(w.isascii() for w in vocab)


def _strip(word: str) -> str:
    return word.strip(".,;").lower().removesuffix("'s")


def _words(text: str) -> list[str]:
    return [_strip(w) for w in text.split()]


def test_cirr_captions_make_one_to_three_changes_with_punctuation_and_read_back():
    rng = random.Random(11)
    counts, punctuated, possessive, content = {1: 0, 2: 0, 3: 0}, 0, 0, 0
    for _ in range(1500):
        scene = random_scene(rng)
        edits = sample_changes(scene, rng)
        target = apply_changes(scene, edits)
        caption = composite_caption(scene, edits, rng)
        counts[len(edits)] += 1
        punctuated += any(p in caption for p in ",.;")
        possessive += "'s " in caption
        parsed, contents = parse_composite_caption(scene, caption)
        content += bool(contents)
        assert parsed == edits, caption
        assert check_composite_caption(scene, target, caption), caption
        assert all(c.holds(target) for c in contents)
        assert not check_composite_caption(target, scene, caption) or target == scene
        # a change left out is a different target
        if len(edits) > 1:
            assert not check_composite_caption(scene, apply_changes(scene, edits[:-1]), caption)
    assert all(n > 150 for n in counts.values()), counts
    assert punctuated > 500 and possessive > 20 and 400 < content < 1100


def test_composite_caption_by_hand():
    ref = Scene("white", (SceneObject(0, "circle", "red", "small"), SceneObject(4, "star", "blue", "large")))
    target = Scene("black", (SceneObject(0, "circle", "green", "small"), SceneObject(4, "star", "blue", "large")))
    assert check_composite_caption(ref, target, "Make the circle green, and change the background to black.")
    assert check_composite_caption(ref, target, "change the circle's color to green; use a black background")
    assert check_composite_caption(ref, target, "Make the circle green. So that it shows a green circle at the top "
                                                "left, then make the background black")
    assert not check_composite_caption(ref, target, "Make the circle green, and there should be a red star")
    assert not check_composite_caption(ref, target, "Make the circle green.")  # the background change is missing
    full = "show a small green circle at the top left and a large blue star at the center on a black background"
    assert check_composite_caption(ref, target, f"Make the circle green, make the background black, {full}.")
    assert not check_composite_caption(ref, target, f"make the background black, {full}")  # the edits fall short


# ----------------------------------------------------------------- rendering and the stream


def test_render_is_deterministic_and_draws_the_graph():
    scene = Scene("white", (SceneObject(4, "square", "red", "large"), SceneObject(0, "circle", "blue", "small")))
    a, b = render_scene(scene, 48, 7), render_scene(scene, 48, 7)
    assert a.tobytes() == b.tobytes()
    assert render_scene(scene, 48, 8).tobytes() != a.tobytes()
    plain = render_scene(scene, 48, None)
    assert plain.size == (48, 48)
    assert plain.getpixel((24, 24)) == COLOURS["red"]  # centre of cell 4
    assert plain.getpixel((8, 8)) == COLOURS["blue"]  # centre of cell 0
    assert plain.getpixel((40, 8)) == BACKGROUNDS["white"]  # empty cell 2
    assert render_scene(scene, 64, 7).size == (64, 64)


def test_clip_stream_is_seeded_and_mixes_edit_text():
    def take(seed, n=120):
        items = list(itertools.islice(clip_pretraining_stream(seed, relative_fraction=0.2, composed_fraction=0.2), n))
        return [(im.tobytes(), text) for im, text in items]

    first = take(0)
    assert first == take(0)
    assert first != take(1)
    texts = [t for _, t in first]
    composed = ("a photo of ", "like ")
    assert any(t.startswith(composed) or ", but " in t for t in texts)  # composed items
    assert any(t.lower().startswith(COMMAND_VERBS) for t in texts)  # relative items
    scene_like = (" background", " image with ", " picture of ")
    assert sum(any(m in t for m in scene_like) and not t.startswith("a photo") for t in texts) > len(texts) // 2
    worded = [t for _, t in itertools.islice(clip_pretraining_stream(0, relative_fraction=1.0, pair_fraction=0.0,
                                                                     attribute_fraction=0.5), 40)]
    assert any(" is " in t or t.lower().startswith(("has ", "is ")) for t in worded)  # FashionIQ-like wording
    assert any(t.lower().startswith(COMMAND_VERBS) for t in worded)
    images, captions = clip_pair_sampler(relative_fraction=0.2)(random.Random(0), 32)
    assert len(images) == len(captions) == 32 and images[0].size == (48, 48)
    again = clip_pair_sampler(relative_fraction=0.2)(random.Random(0), 32)
    assert again[1] == captions and [im.tobytes() for im in again[0]] == [im.tobytes() for im in images]


# ----------------------------------------------------------------- the world on disk


def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    again = build_world(tmp_path / "again", seed=0, sizes=SMALL)
    assert again["reused"] is False
    assert _files(world) == _files(tmp_path / "again")
    build_world(tmp_path / "other", seed=1, sizes=SMALL)
    other = _files(tmp_path / "other")
    for name in ("cirr/captions/cap.rc2.val.json", "fashioniq/captions/cap.dress.val.json",
                 "circo/annotations/val.json", "corpora/lincir_captions.txt"):
        assert other[name] != _files(world)[name]


def test_build_is_idempotent_and_rebuilds_partial_worlds(tmp_path):
    root = tmp_path / "w"
    build_world(root, seed=0, sizes=SMALL)
    reference = _files(root)
    victim = root / "cirr" / "captions" / "cap.rc2.val.json"
    mtime = victim.stat().st_mtime_ns
    assert build_world(root, seed=0, sizes=SMALL)["reused"] is True
    assert victim.stat().st_mtime_ns == mtime
    # an interrupted build: no manifest, a missing file, a stray file from an older build
    (root / "manifest.json").unlink()
    (root / ".zscir-world-building").touch()
    victim.unlink()
    (root / "cirr" / "dev" / "stray.png").write_bytes(b"x")
    assert build_world(root, seed=0, sizes=SMALL)["reused"] is False
    assert _files(root) == reference
    # other settings are rebuilt, not reused
    assert build_world(root, seed=0, sizes={**SMALL.__dict__, "cirr_distractors": 6})["reused"] is False
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_world(foreign, seed=0, sizes=SMALL)
    with pytest.raises(ValueError, match="unknown world size"):
        build_world(tmp_path / "x", sizes={"cirr_sets": 3})


def _schema(obj, maps=("target_soft",), key=None):
    """Field names (in order) and JSON types; dicts keyed by image names are compared by value type."""
    if isinstance(obj, dict):
        if key in maps:
            return ("map", sorted({_schema(v) for v in obj.values()}))
        return {"keys": list(obj), "fields": {k: _schema(v, maps, k) for k, v in obj.items()}}
    if isinstance(obj, list):
        kinds = [json.dumps(_schema(v, maps, key), sort_keys=True) for v in obj]
        assert len(set(kinds)) <= 1, f"mixed list elements under {key}"
        return ("list", json.loads(kinds[0]) if kinds else None)
    return type(obj).__name__


def _compare(sample_path: Path, written_path: Path, top_map: bool = False):
    sample, written = json.loads(sample_path.read_text()), json.loads(written_path.read_text())
    assert type(sample) is type(written)
    if top_map:  # split files: {name: path}
        assert {type(v) for v in sample.values()} == {type(v) for v in written.values()} == {str}
        return
    if isinstance(sample, list) and sample and isinstance(sample[0], dict):
        for record in written:
            assert _schema(record) == _schema(sample[0]), (written_path.name, record)
        return
    assert _schema(written) == _schema(sample), written_path.name


def test_written_json_matches_real_sample_files(world):
    for split in ("val", "test1"):
        _compare(FORMATS / f"cirr/captions/cap.rc2.{split}.json", world / f"cirr/captions/cap.rc2.{split}.json")
        _compare(FORMATS / f"cirr/image_splits/split.rc2.{split}.json",
                 world / f"cirr/image_splits/split.rc2.{split}.json", top_map=True)
    # train has the same record form as val in CIRR
    _compare(FORMATS / "cirr/captions/cap.rc2.val.json", world / "cirr/captions/cap.rc2.train.json")
    for cat, split in itertools.product(("dress", "shirt", "toptee"), ("val", "test")):
        _compare(FORMATS / f"fashioniq/captions/cap.{cat}.{split}.json",
                 world / f"fashioniq/captions/cap.{cat}.{split}.json")
        _compare(FORMATS / f"fashioniq/image_splits/split.{cat}.{split}.json",
                 world / f"fashioniq/image_splits/split.{cat}.{split}.json")
    for split in ("val", "test"):
        _compare(FORMATS / f"circo/annotations/{split}.json", world / f"circo/annotations/{split}.json")
    info = json.loads((world / "circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").read_text())
    assert all(isinstance(i["id"], int) and isinstance(i["file_name"], str) for i in info["images"])
    for record in json.loads((world / "cirr/captions/cap.rc2.val.json").read_text()):
        members = record["img_set"]["members"]
        assert len(members) == 6 and members[record["img_set"]["reference_rank"]] == record["reference"]
        assert members[record["img_set"]["target_rank"]] == record["target_hard"]
        assert record["target_soft"] == {record["target_hard"]: 1.0}
    for record in json.loads((world / "fashioniq/captions/cap.dress.val.json").read_text()):
        assert len(record["captions"]) == 2


def test_every_named_image_exists(world):
    cirr = world / "cirr"
    for split in ("train", "val", "test1"):
        files = json.loads((cirr / f"image_splits/split.rc2.{split}.json").read_text())
        assert all((cirr / rel).is_file() and rel.startswith("./") for rel in files.values())
        for r in json.loads((cirr / f"captions/cap.rc2.{split}.json").read_text()):
            named = [r["reference"], *r["img_set"]["members"]] + ([r["target_hard"]] if "target_hard" in r else [])
            assert set(named) <= set(files)
    fiq = world / "fashioniq"
    for cat, split in itertools.product(("dress", "shirt", "toptee"), ("train", "val", "test")):
        ids = json.loads((fiq / f"image_splits/split.{cat}.{split}.json").read_text())
        assert len(ids) == len(set(ids)) and all((fiq / "images" / f"{i}.png").is_file() for i in ids)
        for r in json.loads((fiq / f"captions/cap.{cat}.{split}.json").read_text()):
            assert r["candidate"] in ids and r.get("target", r["candidate"]) in ids
    circo = world / "circo"
    images = json.loads((circo / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").read_text())["images"]
    assert all((circo / "COCO2017_unlabeled/unlabeled2017" / i["file_name"]).is_file() for i in images)
    ids = {i["id"] for i in images}
    for split in ("val", "test"):
        for r in json.loads((circo / f"annotations/{split}.json").read_text()):
            assert r["reference_img_id"] in ids and set(r.get("gt_img_ids", [])) <= ids


def test_every_cirr_query_edit_maps_reference_to_target_and_only_target(world):
    sidecar, scenes = _scenes(world / "cirr/scenes.json")
    for split in ("train", "val", "test1"):
        written = json.loads((world / f"cirr/captions/cap.rc2.{split}.json").read_text())
        gallery = [n for n, r in sidecar["images"].items() if r["split"] == split]
        assert len({scenes[n] for n in gallery}) == len(gallery)  # graphs unique within a split
        for record, q in zip(written, sidecar["queries"][split], strict=True):
            assert (record["pairid"], record["reference"], record["caption"]) == (q["pairid"], q["reference"],
                                                                                 q["caption"])
            ref = scenes[q["reference"]]
            hits = [n for n in gallery if check_composite_caption(ref, scenes[n], q["caption"])]
            assert hits == [q["target"]], (q["caption"], hits)
            edits, _ = parse_composite_caption(ref, q["caption"])
            assert q["edit_type"] == (edits[0].kind if len(edits) == 1 else f"{len(edits)} changes")


def _single_edits(scene: Scene):
    """Every one-step change of a scene, enumerated from the definition (reference for the negatives test)."""
    for bg in BACKGROUNDS:
        yield Edit("background", background=bg)
    for obj in scene.objects:
        yield Edit("remove", cell=obj.cell)
        for c in COLOURS:
            yield Edit("recolour", cell=obj.cell, colour=c)
        for s in SHAPES:
            yield Edit("reshape", cell=obj.cell, shape=s)
        for z in SIZES:
            yield Edit("resize", cell=obj.cell, size=z)
        for cell in scene.free_cells():
            yield Edit("move", cell=obj.cell, to_cell=cell)


def test_hard_negatives_share_all_but_one_attribute_with_the_target(world):
    sidecar, scenes = _scenes(world / "cirr/scenes.json")
    n_sets = 0
    for split in ("train", "val", "test1"):
        for s in sidecar["sets"][split]:
            target, ref = scenes[s["target"]], scenes[s["reference"]]
            assert len(s["negatives"]) == 4
            for neg in s["negatives"]:
                scene = scenes[neg["name"]]
                assert scene not in (target, ref)
                assert any(edit_matches(target, scene, e) for e in _single_edits(target))
                assert len(scene.objects) == len(target.objects)
            n_sets += 1
    assert n_sets == SMALL.cirr_train_sets + SMALL.cirr_val_sets + SMALL.cirr_test_sets


COMMAND_VERBS = ("make ", "remove ", "add ", "move ", "turn ", "paint ", "change ", "put ", "delete ", "shrink ",
                 "enlarge ", "replace ", "shift ", "place ", "insert ", "take ", "get ", "use ")


def test_fashioniq_captions_describe_the_change(world):
    sidecar, scenes = _scenes(world / "fashioniq/scenes.json")
    kinds = set()
    for cat, n_obj in (("dress", 1), ("shirt", 2), ("toptee", 3)):
        for split in ("train", "val", "test"):
            written = json.loads((world / f"fashioniq/captions/cap.{cat}.{split}.json").read_text())
            ids = json.loads((world / f"fashioniq/image_splits/split.{cat}.{split}.json").read_text())
            assert all(len(scenes[i].objects) == n_obj for i in ids)
            for record, q in zip(written, sidecar["queries"][f"{cat}.{split}"], strict=True):
                assert record["captions"] == q["captions"] and record["candidate"] == q["candidate"]
                ref = scenes[q["candidate"]]
                hits = [i for i in ids if check_edit(ref, scenes[i], q["captions"])]
                assert hits == [q["target"]]
                kinds.add(len(q["edits"]))
                # FashionIQ-like: statements about the target, not the CIRR-like edit commands
                assert not any(c.startswith(COMMAND_VERBS) for c in q["captions"]), q["captions"]
    assert kinds == {1, 2}  # both paraphrase pairs and two-part descriptions occur


def test_circo_ground_truths_are_exactly_the_images_that_satisfy_the_caption(world):
    sidecar, scenes = _scenes(world / "circo/scenes.json")
    gallery = {int(k): v for k, v in scenes.items()}
    multi_scene = 0
    for split in ("val", "test"):
        written = json.loads((world / f"circo/annotations/{split}.json").read_text())
        for record, q in zip(written, sidecar["queries"][split], strict=True):
            ref = gallery[record["reference_img_id"]]
            hits = sorted(i for i, s in gallery.items() if check_edit(ref, s, record["relative_caption"]))
            assert hits == sorted(q["gt_img_ids"]) and len(hits) >= 2
            assert q["gt_img_ids"][0] == q["target"]
            if split == "val":
                assert record["gt_img_ids"] == q["gt_img_ids"] and record["target_img_id"] == q["target"]
            multi_scene += len({gallery[i] for i in hits}) > 1
            concept = record["shared_concept"]
            assert concept in describe_scene(ref) and concept in describe_scene(gallery[q["target"]])
    assert multi_scene > 0  # some queries have several different target scenes, not only re-renders


def test_corpora_files(world):
    lines = (world / "corpora/lincir_captions.txt").read_text().splitlines()
    assert len(lines) == SMALL.lincir_captions and all(lines)
    triplets = [json.loads(x) for x in (world / "corpora/rtd_triplets.jsonl").read_text().splitlines()]
    assert len(triplets) == SMALL.rtd_triplets
    assert all(set(t) == {"reference_caption", "conditioning_caption", "target_caption"} for t in triplets)
    held = [json.loads(x) for x in (world / "corpora/clip_heldout/captions.jsonl").read_text().splitlines()]
    assert len(held) == SMALL.clip_heldout
    for record in held:
        assert record["caption"] == describe_scene(Scene.from_dict(record["scene"]))
        assert (world / "corpora/clip_heldout" / record["image"]).is_file()
    png = (world / "corpora/clip_heldout" / held[0]["image"]).read_bytes()
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size == (SMALL.image_size, SMALL.image_size)


def test_composed_items_describe_the_reference_then_a_change_that_leads_to_the_image_scene():
    """CLIP pretraining's composed texts: the reference's own caption, then CIRR-like changes, within the context."""
    from zscir.data.synthetic.cirr_captions import parse_scene_caption
    from zscir.data.synthetic.corpora import COMPOSED_TEMPLATES, composed_item
    from zscir.demo.world_models import world_tokenizer

    context = 64  # the context the composed-pretraining experiment uses (`zscir train-clip --context-length 64`)
    tokenizer = world_tokenizer(context)
    rng = random.Random(5)
    composed = 0
    for _ in range(300):
        reference = random_scene(rng)
        image, text = composed_item(reference, rng, 32)
        assert image.size == (32, 32)
        assert len(tokenizer(text)["input_ids"]) <= context, text
        for template in COMPOSED_TEMPLATES:
            prefix, middle = template.split("{ref}")[0], template.split("{ref}")[1].split("{change}")[0]
            if text.startswith(prefix) and middle in text[len(prefix):]:
                described, change = text[len(prefix):].split(middle, 1)
                try:
                    scene = parse_scene_caption(described)
                except ValueError:
                    continue
                assert scene == reference
                edits, _ = parse_composite_caption(reference, change)
                assert edits and all(e.fully_specified for e in edits)
                composed += 1
                break
    assert composed > 200  # most draws fit the context; the rest fall back to the relative caption alone
