"""Scene graphs: a background and 1-3 objects (shape, colour, size, cell), hashable and JSON-friendly.

A `Scene` keeps its objects sorted by cell, so two scenes are equal exactly when they describe the
same picture (up to render jitter). At most one object sits in each cell of the 3x3 grid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from zscir.data.synthetic.vocab import BACKGROUNDS, COLOURS, N_CELLS, SHAPES, SIZES

MAX_OBJECTS = 3


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object of a scene. Fields are vocabulary words except `cell` (0..8, row-major, top row first)."""

    cell: int
    shape: str
    colour: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {SIZES}")
        if not (isinstance(self.cell, int) and 0 <= self.cell < N_CELLS):
            raise ValueError(f"cell must be an int in [0, {N_CELLS}), got {self.cell!r}")

    def replace(self, **changes: Any) -> "SceneObject":
        """A copy with some fields changed (validated again)."""
        fields = {"cell": self.cell, "shape": self.shape, "colour": self.colour, "size": self.size}
        fields.update(changes)
        return SceneObject(**fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "cell": self.cell}


@dataclass(frozen=True)
class Scene:
    """A scene graph: background colour name and a tuple of objects sorted by cell (one per cell)."""

    background: str
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")
        objects = tuple(sorted(self.objects))
        cells = [o.cell for o in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1..{MAX_OBJECTS} objects, got {len(objects)}")
        object.__setattr__(self, "objects", objects)

    def object_at(self, cell: int) -> SceneObject | None:
        """The object in `cell`, or None."""
        for obj in self.objects:
            if obj.cell == cell:
                return obj
        return None

    def free_cells(self) -> list[int]:
        """Cells with no object, in increasing order."""
        used = {o.cell for o in self.objects}
        return [c for c in range(N_CELLS) if c not in used]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: {"background": str, "objects": [{shape, colour, size, cell}, ...]}."""
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        """Inverse of `to_dict`.

        Args:
            data: {"background": str, "objects": [{"shape", "colour", "size", "cell"}, ...]}.
        Returns:
            The validated Scene.
        """
        return cls(data["background"], tuple(SceneObject(**o) for o in data["objects"]))

    def key(self) -> str:
        """A short canonical string, equal for equal scenes (for dict keys and sorting)."""
        parts = [self.background] + [f"{o.cell}:{o.size}:{o.colour}:{o.shape}" for o in self.objects]
        return "|".join(parts)


def random_object(rng: random.Random, cell: int) -> SceneObject:
    """A uniformly random object placed in `cell`."""
    return SceneObject(cell=cell, shape=rng.choice(SHAPES), colour=rng.choice(tuple(COLOURS)), size=rng.choice(SIZES))


def random_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A random scene graph.

    Args:
        rng: the random source (a `random.Random`, never the global one).
        n_objects: 1..3 objects, or None for a uniform choice.
    Returns:
        A Scene with distinct cells.
    """
    n = rng.randint(1, MAX_OBJECTS) if n_objects is None else n_objects
    cells = rng.sample(range(N_CELLS), n)
    return Scene(rng.choice(tuple(BACKGROUNDS)), tuple(random_object(rng, c) for c in cells))
