"""CIRR-like relative captions: 1-3 changes in one sentence, sometimes a clause on what the target shows.

Real CIRR captions ("Remove the dog, and show two cats on a couch.") make several changes at once,
often name what the target contains, and carry capitals, commas, final periods and possessives.
This module builds such captions from the world's grammar and reads them back:

- `sample_changes`: 1-3 edits of a reference on different parts of the scene (attribute edits and
  a background change first, at most one structural edit — move, add, remove — last), so every
  edit's referent can be named in the reference scene;
- `composite_caption`: the edits' clauses plus, sometimes, a content clause about the target
  ("so that it shows a large green star", "show a small red circle at the top left on a black
  background"), joined with ", " / ", and " / ", then " / "; " / ". ", capitalised, with or without a
  final period;
- `parse_composite_caption` / `check_composite_caption`: the inverse, used by the tests on every
  written query (the target is exactly the scene the caption asks for).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from zscir.data.synthetic.captions import SCENE_TEMPLATES, describe_scene, position_phrase
from zscir.data.synthetic.edits import (
    _CELL_WORDS,
    _PHRASE,
    Edit,
    _alt,
    apply_edit,
    edit_matches,
    parse_relative_caption,
    relative_caption,
    sample_edit,
)
from zscir.data.synthetic.scene import Scene, SceneObject
from zscir.data.synthetic.vocab import BACKGROUNDS, COLOURS, SHAPES, SIZES

STRUCTURAL = ("move", "add", "remove")
ATTRIBUTE = ("recolour", "reshape", "resize", "background")
# How many changes a caption makes (CIRR: most captions one or two, some three).
CHANGE_WEIGHTS: tuple[float, float, float] = (0.45, 0.35, 0.20)
SEPARATORS: tuple[str, ...] = (", ", ", and ", ", then ", "; ", ". ")
_SPLIT = re.compile(r", and |, then |; |\. |, ")
# Content clauses: what the target shows. {obj} = "a large green star (at the top left)", {scene} = a scene caption.
OBJECT_CLAUSES: tuple[str, ...] = ("so that it shows {obj}", "there should be {obj}", "the new image has {obj}")
SCENE_CLAUSES: tuple[str, ...] = ("show {scene}", "the result is {scene}")
BACKGROUND_CLAUSES: tuple[str, ...] = ("keep the {bg} background",)


@dataclass(frozen=True)
class Content:
    """A content clause: the target has an object like this (None = any), or this background, or is this scene."""

    kind: str  # "object" | "background" | "scene"
    size: str | None = None
    colour: str | None = None
    shape: str | None = None
    cell: int | None = None
    background: str | None = None
    scene: Scene | None = None

    def holds(self, target: Scene) -> bool:
        """Whether the target satisfies the clause."""
        if self.kind == "scene":
            return target == self.scene
        if self.kind == "background":
            return target.background == self.background
        return any(o.shape == self.shape and o.colour == self.colour and self.size in (None, o.size)
                   and self.cell in (None, o.cell) for o in target.objects)


def sample_changes(reference: Scene, rng: random.Random, weights: tuple[float, ...] = CHANGE_WEIGHTS) -> list[Edit]:
    """1-3 feasible edits of `reference` on different parts of the scene (structural edit last).

    Args:
        reference: the reference scene.
        rng: random source.
        weights: probabilities of 1, 2, 3 changes.
    Returns:
        The edits, in the order they apply (each to the result of the previous ones).
    """
    wanted = rng.choices(range(1, len(weights) + 1), weights=weights)[0]
    edits: list[Edit] = []
    scene = reference
    touched: set = set()
    for _ in range(40):
        if len(edits) == wanted:
            break
        edit = sample_edit(scene, rng)
        part = edit.cell if edit.kind in ("recolour", "reshape", "resize", "move", "remove") else edit.kind
        if part in touched or (edit.kind == "add" and "add" in touched):
            continue
        if edit.kind in STRUCTURAL and len(edits) < wanted - 1:
            continue  # a structural edit comes last, so every earlier referent keeps its cell
        edits.append(edit)
        touched.add(part)
        scene = apply_edit(scene, edit)
    return edits


def apply_changes(reference: Scene, edits: list[Edit]) -> Scene:
    """The target of a list of edits applied in order."""
    scene = reference
    for edit in edits:
        scene = apply_edit(scene, edit)
    return scene


def content_clause(reference: Scene, edits: list[Edit], target: Scene, rng: random.Random,
                   scene_fraction: float = 0.3) -> str:
    """A clause on what the target shows: an object the edits produced or kept, or (one change, at most two
    objects, so that the caption fits a 32-token context) the whole target scene."""
    if rng.random() < scene_fraction and len(target.objects) <= 2 and len(edits) == 1:
        return rng.choice(SCENE_CLAUSES).format(scene=describe_scene(target, rng))
    changed = {e.to_cell if e.kind in ("move", "add") else e.cell for e in edits} - {None}
    pool = [o for o in target.objects if o.cell in changed] or list(target.objects)
    obj = rng.choice(pool)
    words = " ".join(w for w in ("a", obj.size if rng.random() < 0.5 else None, obj.colour, obj.shape) if w)
    if rng.random() < 0.5:
        words += " " + position_phrase(obj.cell, rng, corner=False)
    return rng.choice(OBJECT_CLAUSES).format(obj=words)


def composite_caption(reference: Scene, edits: list[Edit], rng: random.Random, content_fraction: float = 0.5,
                      scene_fraction: float = 0.3, style: str = "command") -> str:
    """A CIRR-like caption for `edits` (see the module docstring).

    Args:
        reference: the reference scene (referents are named in it).
        edits: from `sample_changes`.
        rng: paraphrase source.
        content_fraction: probability of a clause on what the target shows.
        scene_fraction: probability that such a clause describes the whole target (see `content_clause`).
        style: wording of the edits ("command" as in CIRR, "attribute" as in FashionIQ; `relative_caption`).
    Returns:
        e.g. "Make the circle green, and remove the small star." or
        "Change the background to black; so that it shows a large green circle".
    """
    clauses = [relative_caption(reference, e, rng, style=style) for e in edits]
    if rng.random() < content_fraction:
        clauses.append(content_clause(reference, edits, apply_changes(reference, edits), rng, scene_fraction))
    text = clauses[0]
    for clause in clauses[1:]:
        separator = rng.choice(SEPARATORS)
        text += separator + (clause[0].upper() + clause[1:] if separator == ". " else clause)
    text = text[0].upper() + text[1:] if rng.random() < 0.7 else text
    return text + "." if rng.random() < 0.6 else text


# ---------------------------------------------------------------- reading captions back

_SCENE_OBJECT = (rf"a (?:{_alt(SIZES)}) (?:{_alt(COLOURS)}) (?:{_alt(SHAPES)}) (?:at|in) the "
                 rf"(?:{_alt(_CELL_WORDS)})")
_OBJECTS = rf"{_SCENE_OBJECT}(?: and {_SCENE_OBJECT})*"


def parse_scene_caption(text: str) -> Scene:
    """The scene of a caption written by `describe_scene` (any paraphrase).

    Raises:
        ValueError: if the text is not a scene caption of the grammar.
    """
    for template in SCENE_TEMPLATES:
        pattern = re.escape(template).replace(re.escape("{objects}"), f"(?P<objects>{_OBJECTS})")
        pattern = pattern.replace(re.escape("{bg}"), f"(?P<bg>{_alt(BACKGROUNDS)})")
        m = re.fullmatch(pattern, text)
        if m:
            objects = []
            for phrase in m["objects"].split(" and "):
                p = _PHRASE.match(phrase)
                objects.append(SceneObject(cell=_CELL_WORDS[p["cell"]], shape=p["shape"], colour=p["colour"],
                                           size=p["size"]))
            return Scene(m["bg"], tuple(objects))
    raise ValueError(f"not a scene caption: {text!r}")


def _parse_content(clause: str) -> Content | None:
    for template in SCENE_CLAUSES:
        prefix = template.split("{")[0]
        if clause.startswith(prefix):
            try:
                return Content("scene", scene=parse_scene_caption(clause[len(prefix):]))
            except ValueError:
                pass
    for template in OBJECT_CLAUSES:
        prefix = template.split("{")[0]
        if clause.startswith(prefix) and clause[len(prefix):].startswith("a "):
            m = _PHRASE.match(clause[len(prefix):])
            if m and m["colour"]:
                cell = _CELL_WORDS[m["cell"]] if m["cell"] else None
                return Content("object", size=m["size"], colour=m["colour"], shape=m["shape"], cell=cell)
    for template in BACKGROUND_CLAUSES:
        m = re.fullmatch(re.escape(template).replace(re.escape("{bg}"), f"({_alt(BACKGROUNDS)})"), clause)
        if m:
            return Content("background", background=m[1])
    return None


def parse_composite_caption(reference: Scene, caption: str) -> tuple[list[Edit], list[Content]]:
    """Read a CIRR-like caption back into its edits (referents resolved in `reference`) and content clauses.

    Raises:
        ValueError: if a clause is neither an edit nor a content clause of the grammar.
    """
    text = caption.strip().rstrip(".").lower()
    edits, contents = [], []
    for clause in _SPLIT.split(text):
        content = _parse_content(clause)
        if content is not None:
            contents.append(content)
        else:
            edits.append(parse_relative_caption(reference, clause))
    if not edits:
        raise ValueError(f"caption {caption!r} makes no change")
    return edits, contents


def check_composite_caption(reference: Scene, target: Scene, caption: str) -> bool:
    """Whether the caption's edits, applied in order, turn `reference` into `target` and every content clause holds.

    Each step is checked from the definition of its edit (`edit_matches`), not only by construction.
    """
    try:
        edits, contents = parse_composite_caption(reference, caption)
    except ValueError:
        return False
    scene = reference
    for edit in edits:
        if not edit.fully_specified:
            return False
        try:
            nxt = apply_edit(scene, edit)
        except ValueError:
            return False
        if not edit_matches(scene, nxt, edit):
            return False
        scene = nxt
    return scene == target and all(c.holds(target) for c in contents)
