"""Demo reporting: the metric table, per-edit-type recall, the results JSON and a PNG grid of queries."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# (benchmark, metric) columns of the printed table; FashionIQ is the mean over its categories.
COLUMNS: list[tuple[str, str]] = [
    ("cirr", "R@1"), ("cirr", "R@5"), ("cirr", "R@10"), ("cirr", "R@50"), ("cirr", "Rs@1"),
    ("fashioniq", "R@10"), ("fashioniq", "R@50"), ("circo", "mAP@5"), ("circo", "mAP@10"),
]
SHORT = {"cirr": "CIRR", "fashioniq": "FIQ", "circo": "CIRCO"}


def format_results_table(rows: dict[str, dict[str, dict[str, float]]],
                         std: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """rows = {method label: {benchmark: metrics}} → a fixed-width table (percent); with `std`, "mean ± std"."""
    width = max([len(r) for r in rows] + [6]) + 2
    cell = 14 if std else 13
    header = "method".ljust(width) + "".join(f"{SHORT[b]} {m}".rjust(cell) for b, m in COLUMNS)
    lines = [header, "-" * len(header)]
    for label, by_bench in rows.items():
        cells = []
        for bench, metric in COLUMNS:
            value = by_bench.get(bench, {}).get(metric)
            spread = (std or {}).get(label, {}).get(bench, {}).get(metric)
            text = "-" if value is None else f"{value:.1f}" + ("" if spread is None else f" ± {spread:.1f}")
            cells.append(text.rjust(cell))
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def cirr_edit_types(world_data: Path, split: str = "val") -> dict[str, str]:
    """pairid (as str) → edit type of the world's CIRR-format queries (from the scenes.json sidecar)."""
    scenes = json.loads((world_data / "cirr" / "scenes.json").read_text())
    return {str(q["pairid"]): q["edit_type"] for q in scenes["queries"][split]}


def recall_by_edit_type(result, edit_types: dict[str, str], k: int = 1) -> dict[str, float]:
    """CIRR Recall@k (reference removed) per edit type, from an `EvalResult`."""
    from zscir.evaluation.metrics import allowed_mask, recall_at_k, target_indices, target_ranks

    split = result.split
    targets = torch.tensor([t[0] for t in target_indices(split)])
    ranks = target_ranks(result.scores, targets, allowed_mask(split))
    kinds = [edit_types.get(q.query_id, "?") for q in split.queries]
    out = {}
    for kind in sorted(set(kinds)):
        rows = torch.tensor([i for i, x in enumerate(kinds) if x == kind])
        out[f"{kind} (n={len(rows)})"] = round(recall_at_k(ranks[rows], k), 1)
    return out


def query_grid(result, out_path: Path, num_queries: int = 4, top: int = 5, tile: int = 96,
               pseudo_targets: dict[str, Path] | None = None) -> Path:
    """A PNG: per query, reference | target | (pseudo target) | top-k retrieved, with the caption above.

    Retrieved tiles that are the target get a green frame.
    """
    from PIL import Image, ImageDraw

    from zscir.data.images import load_image
    from zscir.evaluation.metrics import allowed_mask, rank_gallery

    split = result.split
    step = max(1, len(split.queries) // num_queries)
    chosen = list(range(0, len(split.queries), step))[:num_queries]
    ranked = rank_gallery(result.scores[chosen], top, allowed_mask(split)[chosen])
    extra = 1 if pseudo_targets else 0
    columns, pad, text_h = 2 + extra + top, 6, 18
    canvas = Image.new("RGB", (columns * (tile + pad) + pad, len(chosen) * (tile + text_h + pad) + pad + 14),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    heads = ["reference", "target"] + (["pseudo target"] if extra else []) + [f"top {i + 1}" for i in range(top)]
    for c, head in enumerate(heads):
        draw.text((pad + c * (tile + pad), 2), head, fill=(90, 90, 90))
    for r, qi in enumerate(chosen):
        query = split.queries[qi]
        y = 14 + pad + r * (tile + text_h + pad)
        draw.text((pad, y), query.captions[0][:110], fill=(0, 0, 0))
        names = [query.reference, query.targets[0]]
        tiles = [load_image(split.images[n]) for n in names]
        if extra:
            path = pseudo_targets.get(query.query_id)
            missing = Image.new("RGB", (8, 8), (200, 200, 200))
            tiles.append(load_image(path) if path and Path(path).exists() else missing)
        retrieved = [split.gallery[int(i)] for i in ranked[r]]
        tiles += [load_image(split.images[n]) for n in retrieved]
        for c, image in enumerate(tiles):
            x = pad + c * (tile + pad)
            canvas.paste(image.resize((tile, tile), Image.NEAREST), (x, y + text_h))
            if c >= 2 + extra and retrieved[c - 2 - extra] == query.targets[0]:
                draw.rectangle([x - 3, y + text_h - 3, x + tile + 2, y + text_h + tile + 2], outline=(0, 170, 0),
                               width=3)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path
