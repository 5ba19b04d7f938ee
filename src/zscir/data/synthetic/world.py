"""`build_world`: write the whole synthetic world (three benchmarks in their real layouts + corpora).

Layout under `root`:
    cirr/        captions/cap.rc2.{train,val,test1}.json, image_splits/split.rc2.*.json,
                 train/ dev/ test1/ (images), scenes.json
    fashioniq/   captions/cap.{dress,shirt,toptee}.{train,val,test}.json, image_splits/, images/, scenes.json
    circo/       annotations/{val,test}.json, COCO2017_unlabeled/{annotations,unlabeled2017}/, scenes.json
    corpora/     lincir_captions.txt, rtd_triplets.jsonl, clip_heldout/{images/,captions.jsonl}
    manifest.json   written last; its presence (with matching seed/sizes/version) marks a complete world.
Each benchmark's `scenes.json` maps every image to its scene graph and every query to its edits and
edit type (a test split's targets are in there too: this world has no hidden labels).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from zscir.data.synthetic.corpora import caption_corpus, rtd_triplets, write_heldout, write_jsonl, write_lines
from zscir.data.synthetic.layout_circo import write_circo
from zscir.data.synthetic.layout_cirr import write_cirr
from zscir.data.synthetic.layout_fashioniq import write_fashioniq
from zscir.errors import DataError
from zscir.utils.io import read_json, write_json_atomic

# 2: CIRR-like captions (1-3 changes, content clauses, punctuation); 3: calibrated content;
# 4: FashionIQ-like attribute captions ("the circle is green")
WORLD_VERSION = 4
MANIFEST = "manifest.json"
BUILDING = ".zscir-world-building"
PARTS = ("cirr", "fashioniq", "circo", "corpora")


@dataclass(frozen=True)
class WorldSizes:
    """How big each part of the world is. The defaults build in well under a minute on 2 cores."""

    image_size: int = 48
    cirr_train_sets: int = 250
    cirr_val_sets: int = 250
    cirr_test_sets: int = 250
    cirr_queries_per_set: int = 2  # val: 250 sets x 2 = 500 queries over 1,500 set images
    cirr_distractors: int = 500  # + 500 random images = 2,000 gallery images per split
    fiq_train_queries: int = 200  # per category
    fiq_val_queries: int = 200
    fiq_test_queries: int = 200
    fiq_negatives: int = 2
    circo_val_queries: int = 200
    circo_test_queries: int = 200
    circo_negatives: int = 2
    circo_distractors: int = 1000
    lincir_captions: int = 20000
    rtd_triplets: int = 10000
    clip_heldout: int = 1000

    @classmethod
    def small(cls) -> "WorldSizes":
        """A tiny world for tests (a second or two to build)."""
        return cls(cirr_train_sets=4, cirr_val_sets=8, cirr_test_sets=4, cirr_distractors=5, fiq_train_queries=3,
                   fiq_val_queries=6, fiq_test_queries=3, circo_val_queries=10, circo_test_queries=4,
                   circo_distractors=10, lincir_captions=50, rtd_triplets=20, clip_heldout=10)


def _sizes(sizes: WorldSizes | dict[str, Any] | None) -> WorldSizes:
    if sizes is None:
        return WorldSizes()
    if isinstance(sizes, WorldSizes):
        return sizes
    unknown = set(sizes) - {f.name for f in fields(WorldSizes)}
    if unknown:
        raise ValueError(f"unknown world size fields {sorted(unknown)}; known: {[f.name for f in fields(WorldSizes)]}")
    return WorldSizes(**sizes)


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete world at `root`, or None if there is none."""
    path = Path(root) / MANIFEST
    return read_json(path) if path.is_file() else None


def build_world(root: str | Path, seed: int = 0, sizes: WorldSizes | dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the synthetic world under `root`, or reuse it if a complete one with the same settings is there.

    Idempotent: a world whose manifest matches (seed, sizes, version) is returned untouched; a partial
    world (interrupted build, no manifest) or one with other settings is deleted part by part and
    rebuilt. A folder that holds other files and no world is refused rather than overwritten.

    Args:
        root: output folder.
        seed: world seed; the same seed and sizes give byte-identical files.
        sizes: a WorldSizes, or a dict of its fields to override, or None for the defaults.
    Returns:
        The manifest {"version", "seed", "sizes", "counts", "paths"} plus "build_seconds" and "reused"
        (not written to disk, so that equal settings give byte-identical worlds).
    Raises:
        DataError: if `root` is a non-empty folder that is not a zscir world.
    """
    root = Path(root)
    sz = _sizes(sizes)
    wanted = {"version": WORLD_VERSION, "seed": seed, "sizes": asdict(sz)}
    manifest = read_manifest(root)
    if manifest is not None and all(manifest.get(k) == v for k, v in wanted.items()):
        return {**manifest, "build_seconds": 0.0, "reused": True}
    if root.exists() and any(root.iterdir()) and manifest is None and not (root / BUILDING).exists():
        raise DataError(f"{root}: folder is not empty and holds no zscir world ({MANIFEST} missing); "
                        "choose an empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / BUILDING).touch()
    (root / MANIFEST).unlink(missing_ok=True)
    for part in PARTS:
        if (root / part).exists():
            shutil.rmtree(root / part)

    start = time.perf_counter()
    counts: dict[str, Any] = {}
    cirr_sizes = {"train": (sz.cirr_train_sets, sz.cirr_distractors), "val": (sz.cirr_val_sets, sz.cirr_distractors),
                  "test1": (sz.cirr_test_sets, sz.cirr_distractors)}
    counts["cirr"] = write_cirr(root / "cirr", seed, cirr_sizes, sz.cirr_queries_per_set, sz.image_size)
    fiq_sizes = {"train": sz.fiq_train_queries, "val": sz.fiq_val_queries, "test": sz.fiq_test_queries}
    counts["fashioniq"] = write_fashioniq(root / "fashioniq", seed, fiq_sizes, sz.fiq_negatives, sz.image_size)
    counts["circo"] = write_circo(root / "circo", seed, {"val": sz.circo_val_queries, "test": sz.circo_test_queries},
                                  sz.circo_negatives, sz.circo_distractors, sz.image_size)
    corpora = root / "corpora"
    write_lines(corpora / "lincir_captions.txt", caption_corpus(seed, sz.lincir_captions))
    write_jsonl(corpora / "rtd_triplets.jsonl", rtd_triplets(seed, sz.rtd_triplets))
    write_heldout(corpora / "clip_heldout", seed, sz.clip_heldout, sz.image_size)
    counts["corpora"] = {"lincir_captions": sz.lincir_captions, "rtd_triplets": sz.rtd_triplets,
                         "clip_heldout": sz.clip_heldout}

    manifest = {**wanted, "counts": counts,
                "paths": {"cirr": "cirr", "fashioniq": "fashioniq", "circo": "circo",
                          "lincir_captions": "corpora/lincir_captions.txt",
                          "rtd_triplets": "corpora/rtd_triplets.jsonl", "clip_heldout": "corpora/clip_heldout"}}
    write_json_atomic(root / MANIFEST, manifest)  # last: its presence marks a complete world
    (root / BUILDING).unlink(missing_ok=True)
    return {**manifest, "build_seconds": round(time.perf_counter() - start, 2), "reused": False}
