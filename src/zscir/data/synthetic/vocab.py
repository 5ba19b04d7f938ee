"""The closed vocabulary of the synthetic world: shapes, colours, sizes, cells, backgrounds.

Everything the grammar can say is built from these tables, so a tiny word-level tokenizer
trained on `world_texts()` covers every caption. All words are lower case, without punctuation.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")

# name -> RGB. Saturated hues, all well away from the three backgrounds below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 60, 200),
    "orange": (250, 135, 20),
    "pink": (250, 125, 195),
    "cyan": (40, 210, 220),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (105, 105, 105),
}

SIZES: tuple[str, ...] = ("small", "large")
# object radius as a fraction of the cell side (before jitter)
SIZE_RADIUS: dict[str, float] = {"small": 0.24, "large": 0.42}

GRID = 3
N_CELLS = GRID * GRID  # cell index = row * 3 + col, row 0 at the top

# Paraphrases of every cell's name; the first is canonical.
CELL_NAMES: tuple[tuple[str, ...], ...] = (
    ("top left", "upper left"),
    ("top center", "top middle"),
    ("top right", "upper right"),
    ("center left", "middle left"),
    ("center", "middle"),
    ("center right", "middle right"),
    ("bottom left", "lower left"),
    ("bottom center", "bottom middle"),
    ("bottom right", "lower right"),
)
CORNER_CELLS: frozenset[int] = frozenset({0, 2, 6, 8})

# The inference prompt of the Phi-based methods (METHODS.md §1); its words belong to the vocabulary.
PSEUDO_TOKEN = "$"
PROMPT_PREFIX = "a photo of $ that"
