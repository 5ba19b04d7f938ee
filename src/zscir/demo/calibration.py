"""The properties the synthetic world is calibrated on, measured by the demo, next to real-data values.

These are properties of the world and of its CLIP, never of a method: the modality geometry of the
world CLIP (Liang et al. 2022, "Mind the Gap"), how much of a reference image the pseudo token of
"a photo of $" carries, and per benchmark layout how much of the target the relative caption
determines (text only against the upper bound) and how close reference and target are (image only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zscir.data.images import load_image
from zscir.data.synthetic.captions import describe_scene
from zscir.data.synthetic.render import render_scene
from zscir.data.synthetic.scene import random_scene
from zscir.training.clip import root_mean_square

# Real-data reference values. "published" values come from the cited paper; "derived" ones are
# computed from published ones (the formula is given); None = no published value we know of.
REAL_CLIP = {
    "gap_norm": {"value": 0.82, "kind": "published",
                 "source": "Liang et al. NeurIPS 2022 (Mind the Gap), CLIP ViT-B/32 on MSCOCO val: "
                           "||mean image - mean text|| of normalised embeddings"},
    "matched_cosine": {"value": 0.30, "kind": "published (approx.)",
                       "source": "Hessel et al. 2021 (CLIPScore): ViT-B/32 image-caption cosines are mostly "
                                 "below 0.4 (w = 2.5 rescales them to [0, 1]); Mind the Gap Fig. 1: ~0.3"},
    "centroid_cosine": {"value": 0.35, "kind": "derived",
                        "source": "two narrow cones on the same side: with within-modality mean pairwise "
                                  "cosine ~0.5 (|mean| ~0.7) and gap 0.82, "
                                  "cos = (|a|^2 + |b|^2 - 0.82^2) / (2|a||b|) ~ 0.3-0.4"},
    "image_rms": {"value": 0.75, "kind": "published (one image)",
                  "source": "raw (unnormalised) OpenAI CLIP ViT-L/14@336 image embedding of one photo: norm 20.8 "
                            "(raw vs L2-normalised values, rom1504/clip-retrieval issue #290), / sqrt(768)"},
    "noise_over_gap": {"value": 0.70, "kind": "derived (upper bound)",
                       "source": "LinCIR's noise E||u n||, u ~ U(0, 1), n ~ N(0, I_768) = 13.9, over the raw "
                                 "matched image-text distance: image norm 20.8 and matched cosine 0.3 give at "
                                 "least 20.8 * sqrt(1 - 0.3^2) = 19.8 whatever the text norm, so <= 0.70"},
    "t2i_R@1": {"value": 37.8, "kind": "published",
                "source": "Radford et al. 2021 (CLIP) Table 13, ViT-L/14@336 zero-shot MSCOCO 5k (ViT-B/32: ~30)"},
    "i2t_R@1": {"value": 58.4, "kind": "published",
                "source": "Radford et al. 2021 (CLIP) Table 13, ViT-L/14@336 zero-shot MSCOCO 5k (ViT-B/32: ~50)"},
}
# CIR baselines on real CIRR (test R@1), for the layout properties (text only against image only).
REAL_BASELINES = {
    "cirr": {"image only R@1": 7.4, "text only R@1": 20.9, "image + text (sum) R@1": 12.4,
             "source": "Saito et al. CVPR 2023 (Pic2Word) Table 2, ViT-L/14, CIRR test"},
}


def modality_geometry(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> dict[str, float]:
    """Modality geometry of paired embeddings (row i of each is one image-caption pair).

    Args:
        image_embeds: [N, P] image embeddings (any scale; normalised here).
        text_embeds: [N, P] text embeddings of the matching captions.
    Returns:
        centroid_cosine: cosine between the mean normalised image and the mean normalised text embedding;
        gap_norm: ||mean image - mean text||; image_cone / text_cone: norm of each mean (1 = all identical,
        ~0 = spread over the sphere); matched_cosine: mean cosine of matching pairs; random_cosine: mean
        cosine of non-matching pairs; t2i_R@1 / i2t_R@1: retrieval among the N pairs (percent); on the raw
        embeddings: image_rms / text_rms (root-mean-square per coordinate) and noise_over_gap (LinCIR's noise
        E||u·n||, u ~ U(0, 1), n ~ N(0, I), over the mean raw distance of matching pairs: how much of the
        modality gap the noise that LinCIR and RTD add to text embeddings spans).
    """
    raw_image, raw_text = image_embeds.float(), text_embeds.float()
    image = F.normalize(raw_image, dim=-1)
    text = F.normalize(raw_text, dim=-1)
    mean_image, mean_text = image.mean(0), text.mean(0)
    sims = text @ image.T
    n = sims.shape[0]
    diagonal = torch.arange(n)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    t2i = (sims.argmax(1) == diagonal).float().mean().item() * 100
    i2t = (sims.argmax(0) == diagonal).float().mean().item() * 100
    return {
        "centroid_cosine": round(F.cosine_similarity(mean_image, mean_text, dim=0).item(), 3),
        "gap_norm": round((mean_image - mean_text).norm().item(), 3),
        "image_cone": round(mean_image.norm().item(), 3),
        "text_cone": round(mean_text.norm().item(), 3),
        "matched_cosine": round(sims.diagonal().mean().item(), 3),
        "random_cosine": round(sims[off_diagonal].mean().item(), 3),
        "t2i_R@1": round(t2i, 2),
        "i2t_R@1": round(i2t, 2),
        "image_rms": round(root_mean_square(raw_image), 3),
        "text_rms": round(root_mean_square(raw_text), 3),
        "noise_over_gap": round(mean_noise_norm(raw_image.shape[1]) / (raw_image - raw_text).norm(dim=1).mean().item(),
                                3),
        "n": n,
    }


def mean_noise_norm(dim: int) -> float:
    """E||u·n|| for u ~ U(0, 1) and n ~ N(0, I_dim): 0.5 · sqrt(2) · Γ((dim + 1) / 2) / Γ(dim / 2)."""
    return 0.5 * math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))


def self_retrieval(backbone, phi, reference_embeds: torch.Tensor, gallery_embeds: torch.Tensor,
                   reference_index: torch.Tensor, prompt: str = "a photo of $") -> float:
    """How much of a reference its pseudo token carries: R@1 of "a photo of $" retrieving the reference itself.

    Args:
        backbone: the CLIP.
        phi: the inversion network (image or text embedding -> pseudo token).
        reference_embeds: [Q, P] embeddings fed to Phi (image embeddings of the references, or, as a
            diagnostic, the text embeddings of their captions).
        gallery_embeds: [G, P] image embeddings of the gallery.
        reference_index: [Q] position of each reference in the gallery.
    Returns:
        Percent of references ranked first among the whole gallery.
    """
    with torch.inference_mode():
        tokens = phi(reference_embeds.to(next(phi.parameters()).device)).float().cpu()
    queries = F.normalize(backbone.encode_text([prompt] * len(tokens), pseudo_tokens=tokens), dim=-1)
    scores = queries @ F.normalize(gallery_embeds.float(), dim=-1).T
    return round((scores.argmax(1) == reference_index).float().mean().item() * 100, 2)


def world_clip_geometry(backbone, heldout_dir) -> dict[str, float]:
    """`modality_geometry` of the world CLIP on the world's held-out image-caption pairs (canonical captions)."""
    import json
    from pathlib import Path

    heldout_dir = Path(heldout_dir)
    records = [json.loads(line) for line in (heldout_dir / "captions.jsonl").read_text().splitlines() if line]
    images = backbone.encode_image([load_image(heldout_dir / r["image"]) for r in records], batch_size=256)
    return modality_geometry(images, backbone.encode_text([r["caption"] for r in records]))


# Per layout: the metric the layout properties are read on (CIRR R@1, FashionIQ R@10, CIRCO mAP@10).
LAYOUT_METRICS = {"cirr": "R@1", "fashioniq": "R@10", "circo": "mAP@10"}


def layout_properties(rows: dict) -> dict[str, dict[str, float]]:
    """Per layout: how much of the target the caption determines and how close reference and target are.

    Returns:
        {benchmark: {"metric", "image_only", "text_only", "upper_bound", "text_over_upper" (fraction of the
        oracle the caption alone reaches), "text_over_image"}} (real CIRR: text/image = 20.9/7.4 = 2.8).
    """
    out = {}
    for bench, metric in LAYOUT_METRICS.items():
        values = {key: rows.get(label, {}).get(bench, {}).get(metric) for key, label in
                  (("image_only", "image only"), ("text_only", "text only"),
                   ("upper_bound", "upper bound: target's own caption"))}
        if any(v is None for v in values.values()):
            continue
        out[bench] = {"metric": metric, **values,
                      "text_over_upper": round(values["text_only"] / max(values["upper_bound"], 1e-9), 3),
                      "text_over_image": round(values["text_only"] / max(values["image_only"], 1e-9), 3)}
    return out


def heldout_pairs(image_size: int = 48, n: int = 1000, seed: str = "clip-heldout") -> tuple[list, list[str]]:
    """`n` fresh (image, canonical caption) pairs of distinct random scenes, for measuring a world CLIP
    outside a world folder (`zscir train-clip`)."""
    import random

    rng = random.Random(seed)
    scenes: dict = {}
    while len(scenes) < n:
        scene = random_scene(rng)
        scenes.setdefault(scene, render_scene(scene, image_size, rng.getrandbits(31)))
    return list(scenes.values()), [describe_scene(s) for s in scenes]
