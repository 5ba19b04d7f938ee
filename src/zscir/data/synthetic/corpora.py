"""Text and image-text corpora of the synthetic world: a CLIP pretraining stream, LinCIR captions,
RTD triplets, a held-out image-caption set, and `world_texts()` for training the tokenizer.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image
from tqdm.auto import tqdm

from zscir.data.synthetic.captions import (
    CORNER_TEMPLATE,
    POSITION_TEMPLATES,
    SCENE_TEMPLATES,
    describe_scene,
    join_phrases,
)
from zscir.data.synthetic.cirr_captions import apply_changes, composite_caption, sample_changes
from zscir.data.synthetic.edits import RESIZE_TEMPLATES, TEMPLATES, apply_edit, sample_edit
from zscir.data.synthetic.render import render_scene
from zscir.data.synthetic.scene import random_scene
from zscir.data.synthetic.vocab import BACKGROUNDS, CELL_NAMES, COLOURS, PROMPT_PREFIX, PSEUDO_TOKEN, SHAPES, SIZES
from zscir.utils.io import atomic_path

# Edits used for "pairs" in the CLIP stream: the kinds the prototype's image tower failed on
# (position, presence) come first, binding (recolour/reshape) next.
PAIR_KINDS: tuple[str, ...] = ("move", "add", "remove", "recolour", "reshape")


def sample_clip_items(rng: random.Random, image_size: int = 48, relative_fraction: float = 0.15,
                      composed_fraction: float = 0.0, pair_fraction: float = 0.25,
                      attribute_fraction: float = 0.0) -> list[tuple[Image.Image, str]]:
    """One draw of CLIP pretraining data: usually one (image, text) item, two for a pair.

    Most draws are a fresh random scene with a paraphrased full caption. Mixed in (see WORLD-NOTES:
    a text tower that never saw edit words cannot read relative captions):
    - relative items: the image of an edited scene with the CIRR-like caption that produced it
      ("Make the circle green, and remove the star." paired with a picture containing a green circle),
      a share `attribute_fraction` of them worded as FashionIQ's statements ("The circle is green, and
      is without the star.");
    - composed items (`composed_item`): the edited image with a text that describes the reference in
      words and then the change ("{reference caption}, but {change}", "a photo of {reference caption}
      that {change}", ...), as web captions describe a picture relative to a familiar one; off by
      default (an experiment of `zscir train-clip --composed-fraction`, see BENCHMARKS.md);
    - pairs (position-aware variety): a scene and a one-edit variant of it (mostly move/add/remove)
      back to back, each with its own caption, so a batch holds near-duplicates that differ only
      in a position or in presence, which the image tower must tell apart.

    Args:
        rng: random source.
        image_size: rendered image side.
        relative_fraction: probability of a relative item.
        composed_fraction: probability of a composed item.
        pair_fraction: probability of a back-to-back pair (two items).
    Returns:
        [(PIL RGB image, text)] with one or two items.
    """
    if relative_fraction + composed_fraction + pair_fraction > 1:
        raise ValueError("relative_fraction + composed_fraction + pair_fraction must be <= 1")
    scene = random_scene(rng)
    u = rng.random()
    if u >= relative_fraction + composed_fraction + pair_fraction:
        return [(render_scene(scene, image_size, rng.getrandbits(31)), describe_scene(scene, rng))]
    if u < relative_fraction:
        edits = sample_changes(scene, rng)
        image = render_scene(apply_changes(scene, edits), image_size, rng.getrandbits(31))
        style = "attribute" if attribute_fraction and rng.random() < attribute_fraction else "command"
        return [(image, composite_caption(scene, edits, rng, style=style))]
    if u < relative_fraction + composed_fraction:
        return [composed_item(scene, rng, image_size)]
    edit = sample_edit(scene, rng, PAIR_KINDS)
    target = apply_edit(scene, edit)
    image = render_scene(target, image_size, rng.getrandbits(31))
    first = (render_scene(scene, image_size, rng.getrandbits(31)), describe_scene(scene, rng))
    return [first, (image, describe_scene(target, rng))]


# How a composed item words "this scene, changed like this" (web captions describe a picture relative to
# another one in many ways; the inference prompt is one of them).
COMPOSED_TEMPLATES: tuple[str, ...] = (
    PROMPT_PREFIX.replace(PSEUDO_TOKEN, "{ref}") + " {change}",
    "{ref}, but {change}",
    "{ref}; {change}",
    "like {ref}, {change}",
)
# Longest composed text kept (words and punctuation marks, each about one CLIP BPE token), so that the
# whole text fits a 64-token context (`--context-length 64`); longer draws fall back to a relative item.
MAX_COMPOSED_PIECES = 56


def composed_item(reference, rng: random.Random, image_size: int = 48) -> tuple[Image.Image, str]:
    """The image of an edited scene with a text that describes the reference in words and then the change
    (1-3 changes, CIRR-like), e.g. "a small red circle at the top left on a white background, but make
    the circle green." (the relative caption alone when the whole text would not fit the context)."""
    edits = sample_changes(reference, rng)
    image = render_scene(apply_changes(reference, edits), image_size, rng.getrandbits(31))
    change = composite_caption(reference, edits, rng)
    template = rng.choice(COMPOSED_TEMPLATES)
    text = template.format(ref=describe_scene(reference, rng), change=change[0].lower() + change[1:])
    return image, text if len(re.findall(r"\w+|[^\w\s]", text)) <= MAX_COMPOSED_PIECES else change


def clip_pretraining_stream(seed: int, image_size: int = 48, relative_fraction: float = 0.15,
                            composed_fraction: float = 0.0, pair_fraction: float = 0.25,
                            attribute_fraction: float = 0.0) -> Iterator[tuple[Image.Image, str]]:
    """An endless, seeded stream of (image, text) pairs for contrastive CLIP pretraining.

    Args:
        seed: stream seed (the same seed gives the same sequence).
        image_size, relative_fraction, composed_fraction, pair_fraction, attribute_fraction: see
            `sample_clip_items`.
    Yields:
        (PIL RGB image, text).
    """
    rng = random.Random(f"{seed}-clip-stream")
    while True:
        yield from sample_clip_items(rng, image_size, relative_fraction, composed_fraction, pair_fraction,
                                     attribute_fraction)


def clip_pair_sampler(image_size: int = 48, relative_fraction: float = 0.15, composed_fraction: float = 0.0,
                      pair_fraction: float = 0.25, attribute_fraction: float = 0.0
                      ) -> Callable[[random.Random, int], tuple[list, list]]:
    """The same data as `clip_pretraining_stream` as a batch sampler `(rng, batch_size) -> (images, texts)`
    (the `sample_pairs` argument of `zscir.training.clip.train_clip`).

    Args:
        image_size, relative_fraction, composed_fraction, pair_fraction, attribute_fraction: see
            `sample_clip_items`.
    Returns:
        A function drawing `batch_size` fresh items (a pair may be cut at the end of a batch).
    """
    def sample(rng: random.Random, batch_size: int) -> tuple[list, list]:
        items: list[tuple[Image.Image, str]] = []
        while len(items) < batch_size:
            items += sample_clip_items(rng, image_size, relative_fraction, composed_fraction, pair_fraction,
                                       attribute_fraction)
        images, texts = zip(*items[:batch_size])
        return list(images), list(texts)

    return sample


def caption_corpus(seed: int, n: int) -> list[str]:
    """`n` paraphrased scene captions (the LinCIR training text).

    Args:
        seed: corpus seed.
        n: number of captions.
    Returns:
        List of captions.
    """
    rng = random.Random(f"{seed}-captions")
    return [describe_scene(random_scene(rng), rng) for _ in range(n)]


def rtd_triplets(seed: int, n: int) -> list[dict[str, str]]:
    """`n` text triplets {reference_caption, conditioning_caption, target_caption} for RTD.

    Args:
        seed: corpus seed.
        n: number of triplets.
    Returns:
        List of dicts; the conditioning caption is a CIRR-like caption of the grammar (1-3 changes).
    """
    rng = random.Random(f"{seed}-triplets")
    out = []
    for _ in range(n):
        ref = random_scene(rng)
        edits = sample_changes(ref, rng)
        out.append({"reference_caption": describe_scene(ref, rng),
                    "conditioning_caption": composite_caption(ref, edits, rng),
                    "target_caption": describe_scene(apply_changes(ref, edits), rng)})
    return out


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one text per line, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_lines(path, [json.dumps(r) for r in records])


def write_heldout(root: Path, seed: int, n: int, image_size: int) -> None:
    """A held-out image-caption set for CLIP validation: images/{i:05d}.png and captions.jsonl
    ({"image", "caption", "scene"}, canonical captions), scene graphs unique.
    """
    rng = random.Random(f"{seed}-heldout")
    seen, records = set(), []
    for i in tqdm(range(n), desc="clip held-out", disable=None):
        scene = random_scene(rng)
        while scene in seen:
            scene = random_scene(rng)
        seen.add(scene)
        name = f"images/{i:05d}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        render_scene(scene, image_size, rng.getrandbits(31)).save(root / name, format="PNG")
        records.append({"image": name, "caption": describe_scene(scene), "scene": scene.to_dict()})
    write_jsonl(root / "captions.jsonl", records)


def world_texts() -> list[str]:
    """Texts that together contain every word the world's grammar can produce.

    Covers scene captions, position phrases, relative-caption templates, FashionIQ's "and" joins,
    the pseudo token "$" and the prompt "a photo of $ that". Meant as the training text of the
    world's word-level tokenizer.

    Returns:
        A list of short texts (grammar templates in lower case, and CIRR-like captions with punctuation).
    """
    texts = [PROMPT_PREFIX, PSEUDO_TOKEN, "a photo of $", " ".join(SHAPES), " ".join(COLOURS),
             " ".join(SIZES), " ".join(BACKGROUNDS), " ".join(n for names in CELL_NAMES for n in names)]
    slots = {"objects": join_phrases(["a small red circle", "a large blue star"]), "bg": "white"}
    texts += [t.format(**slots) for t in SCENE_TEMPLATES]
    texts += [t.format(cell="top left") for t in POSITION_TEMPLATES + (CORNER_TEMPLATE,)]
    rel = {"ref": "the red circle", "colour": "green", "shape": "star", "to": "bottom right corner",
           "obj": "a small blue hexagon in the center", "bg": "black"}
    texts += [t.format(**rel) for ts in TEMPLATES.values() for t in ts]
    texts += [t.format(**rel) for ts in RESIZE_TEMPLATES.values() for t in ts]
    rng = random.Random("world-texts")  # CIRR-like captions: capitals, commas, periods, clauses
    for _ in range(200):
        scene = random_scene(rng)
        texts.append(composite_caption(scene, sample_changes(scene, rng), rng))
    return texts
