"""The synthetic world's concepts and concept phrases for SEARLE's regularisers (OTI and distillation).

`world_concepts` lists the world's concepts, `world_phrases` writes phrases about them with the world's
own caption grammar, and `WORLD_TEMPLATES` are concept templates within the world's vocabulary, so that
SEARLE runs offline on the world (`zscir.oti.concepts.ConceptBank` takes all three).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from zscir.data.synthetic.captions import describe_scene
from zscir.data.synthetic.scene import Scene, SceneObject
from zscir.data.synthetic.vocab import BACKGROUNDS, COLOURS, N_CELLS, SHAPES, SIZES
from zscir.errors import ZscirError
from zscir.utils.hashing import derived_seed

# Templates whose words all belong to the synthetic world's vocabulary (its tokenizer is word-level).
WORLD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a picture of a {}",
    "a {} in the picture",
    "a {} in the image",
)


def world_concepts() -> list[str]:
    """The synthetic world's concepts: every shape and every "colour shape" pair (6 + 48)."""
    return list(SHAPES) + [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]


def world_phrases(concepts: Sequence[str], num_phrases: int = 16, seed: int = 0) -> dict[str, list[str]]:
    """Phrases about each world concept from the world's own caption grammar.

    A phrase is the caption of a one-object scene whose object matches the concept (the other
    attributes, the cell and the background drawn at random), e.g. "a picture of a small red circle
    in the upper left corner on a gray background" for "red circle".

    Args:
        concepts: "shape" or "colour shape" strings (see `world_concepts`).
        num_phrases: phrases drawn per concept (duplicates dropped).
        seed: base seed (each concept has its own stream).
    Returns:
        {concept: [phrases]}.
    Raises:
        ZscirError: a concept that is not a world shape or "colour shape".
    """
    out = {}
    for concept in concepts:
        words = concept.split()
        if not (1 <= len(words) <= 2 and words[-1] in SHAPES and (len(words) == 1 or words[0] in COLOURS)):
            raise ZscirError(f"{concept!r} is not a world concept ('shape' or 'colour shape')")
        rng = random.Random(derived_seed(seed, concept))
        phrases = []
        for _ in range(num_phrases):
            colour = words[0] if len(words) == 2 else rng.choice(list(COLOURS))
            obj = SceneObject(cell=rng.randrange(N_CELLS), shape=words[-1], colour=colour, size=rng.choice(SIZES))
            phrases.append(describe_scene(Scene(rng.choice(list(BACKGROUNDS)), (obj,)), rng))
        out[concept] = list(dict.fromkeys(phrases))
    return out
