"""Demo reporting: the metric table, per-edit-type recall, the results JSON and a PNG grid of queries."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zscir.data.images import load_image
from zscir.evaluation.metrics import allowed_mask, rank_gallery, recall_at_k, target_indices, target_ranks

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
    split = result.split
    targets = torch.tensor([t[0] for t in target_indices(split)])
    ranks = target_ranks(result.scores, targets, allowed_mask(split))
    kinds = [edit_types.get(q.query_id, "?") for q in split.queries]
    out = {}
    for kind in sorted(set(kinds)):
        rows = torch.tensor([i for i, x in enumerate(kinds) if x == kind])
        out[f"{kind} (n={len(rows)})"] = round(recall_at_k(ranks[rows], k), 1)
    return out


def query_grid(result, out_path: Path, num_queries: int = 4, top: int = 5, tile: int = 160,
               pseudo_targets: dict[str, Path] | None = None, method: str = "") -> Path:
    """A PNG: a title naming the method and its R@1, then per query the caption, reference | target |
    (pseudo target) | top-k retrieved with rank and cosine score under each retrieved tile.

    Retrieved tiles that are the target get a green frame (and "target" next to the score).

    Args:
        result: an `EvalResult` (its split, scores and metrics).
        out_path: the PNG to write.
        num_queries / top: rows and retrieved columns.
        tile: side of each image tile in pixels (upscaled without smoothing: the world's images are small).
        pseudo_targets: {query id: image} of CIG, shown as an extra column.
        method: the method whose results these are (shown in the title).
    Returns:
        `out_path`.
    """
    from PIL import Image, ImageDraw, ImageFont

    split = result.split
    step = max(1, len(split.queries) // num_queries)
    chosen = list(range(0, len(split.queries), step))[:num_queries]
    ranked = rank_gallery(result.scores[chosen], top, allowed_mask(split)[chosen])
    extra = 1 if pseudo_targets else 0
    font, small, title_font = (ImageFont.load_default(size=n) for n in (15, 13, 18))
    columns, pad, caption_h, score_h, title_h, head_h = 2 + extra + top, 8, 22, 18, 30, 20
    row_h = caption_h + tile + score_h + pad
    canvas = Image.new("RGB", (columns * (tile + pad) + pad, title_h + head_h + len(chosen) * row_h + pad),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    recall = result.metrics.get("R@1")
    title = f"{method or 'results'} on {split.name}" + (f" — R@1 {recall:.1f}" if recall is not None else "")
    draw.text((pad, 6), title + f" ({len(split.queries)} queries; cosine score under each hit)", fill=(0, 0, 0),
              font=title_font)
    heads = ["reference", "target"] + (["pseudo target"] if extra else []) + [f"top {i + 1}" for i in range(top)]
    for c, head in enumerate(heads):
        draw.text((pad + c * (tile + pad), title_h), head, fill=(90, 90, 90), font=font)
    for r, qi in enumerate(chosen):
        query = split.queries[qi]
        y = title_h + head_h + r * row_h
        draw.text((pad, y + 2), query.captions[0][:140], fill=(0, 0, 0), font=font)
        names = [query.reference, query.targets[0]]
        tiles = [load_image(split.images[n]) for n in names]
        if extra:
            path = pseudo_targets.get(query.query_id)
            missing = Image.new("RGB", (8, 8), (200, 200, 200))
            tiles.append(load_image(path) if path and Path(path).exists() else missing)
        hits = [int(i) for i in ranked[r]]
        retrieved = [split.gallery[i] for i in hits]
        tiles += [load_image(split.images[n]) for n in retrieved]
        top_y = y + caption_h
        for c, image in enumerate(tiles):
            x = pad + c * (tile + pad)
            canvas.paste(image.resize((tile, tile), Image.NEAREST), (x, top_y))
            if c >= 2 + extra:
                k = c - 2 - extra
                is_target = retrieved[k] == query.targets[0]
                if is_target:
                    draw.rectangle([x - 3, top_y - 3, x + tile + 2, top_y + tile + 2], outline=(0, 170, 0), width=3)
                score = float(result.scores[qi, hits[k]])
                draw.text((x, top_y + tile + 2), f"#{k + 1}  {score:+.3f}" + ("  target" if is_target else ""),
                          fill=(0, 130, 0) if is_target else (60, 60, 60), font=small)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path
