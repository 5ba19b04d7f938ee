"""Scene captions from a small grammar with paraphrases.

Every caption names every fact of the scene (background, and for each object its size, colour, shape
and cell); paraphrases vary the template, the word for a position, the preposition and the object
order. With `rng=None` the canonical caption is produced (first template, canonical words, objects
in cell order), so a scene has one reference wording.
"""

from __future__ import annotations

import random

from zscir.data.synthetic.scene import Scene, SceneObject
from zscir.data.synthetic.vocab import CELL_NAMES, CORNER_CELLS

# {objects} is a list of object phrases joined with "and"; {bg} a background colour word.
# Every template adds 4 words, an object phrase has 8 words, so a 3-object caption has at most
# 3 * 8 + 2 ("and") + 4 = 30 words: with start and end tokens it fits the tiny CLIP's context of 32.
SCENE_TEMPLATES: tuple[str, ...] = (
    "{objects} on a {bg} background",
    "a {bg} image with {objects}",
    "a {bg} background with {objects}",
    "a {bg} picture of {objects}",
)
MAX_CAPTION_WORDS = 30
# How an object's position is said; "{cell}" is a cell name. The corner form only for corner cells.
POSITION_TEMPLATES: tuple[str, ...] = ("at the {cell}", "in the {cell}")
CORNER_TEMPLATE = "in the {cell} corner"


def cell_name(cell: int, rng: random.Random | None = None) -> str:
    """A name of the cell ("top left", "upper left", ...); canonical when rng is None."""
    names = CELL_NAMES[cell]
    return names[0] if rng is None else rng.choice(names)


def position_phrase(cell: int, rng: random.Random | None = None, corner: bool = True) -> str:
    """A prepositional phrase for the cell ("at the top left", "in the upper left corner", ...).

    Args:
        cell: cell index 0..8.
        rng: paraphrase source; None gives the canonical "at the {canonical cell name}".
        corner: allow the longer "in the ... corner" form for corner cells.
    """
    if rng is None:
        return POSITION_TEMPLATES[0].format(cell=cell_name(cell))
    templates = POSITION_TEMPLATES + ((CORNER_TEMPLATE,) if corner and cell in CORNER_CELLS else ())
    return rng.choice(templates).format(cell=cell_name(cell, rng))


def object_phrase(obj: SceneObject, rng: random.Random | None = None, with_position: bool = True) -> str:
    """ "a small red circle at the top left" (size, colour, shape and optionally position; 8 words)."""
    words = f"a {obj.size} {obj.colour} {obj.shape}"
    return f"{words} {position_phrase(obj.cell, rng, corner=False)}" if with_position else words


def join_phrases(phrases: list[str]) -> str:
    """ "x", "x and y", "x and y and z" (no commas: the tokenizer is word-level)."""
    return " and ".join(phrases)


def describe_scene(scene: Scene, rng: random.Random | None = None) -> str:
    """A full caption of the scene.

    Args:
        scene: the scene graph.
        rng: source of paraphrase choices; None gives the canonical caption.
    Returns:
        Lower-case words separated by single spaces, e.g.
        "a small red circle at the top left on a white background".
    """
    objects = list(scene.objects)
    if rng is not None:
        rng.shuffle(objects)
    template = SCENE_TEMPLATES[0] if rng is None else rng.choice(SCENE_TEMPLATES)
    phrases = [object_phrase(o, rng) for o in objects]
    return template.format(objects=join_phrases(phrases), bg=scene.background)
