"""Edits of scene graphs and their paraphrased relative captions.

An `Edit` is one change (recolour, reshape, resize, move, add, remove, background). `apply_edit`
builds the target scene; `relative_caption` says the edit in words, naming the edited object by the
shortest description that is unique in the reference scene ("the circle", else "the red circle",
..., else with its position). `parse_relative_caption` reads a caption back into an Edit and
`edit_matches` / `check_edit` test, from the definition of each kind, that a target scene is what
the caption asks for. The tests use those checks on every written query.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from zscir.data.synthetic.captions import cell_name, position_phrase
from zscir.data.synthetic.scene import MAX_OBJECTS, Scene, SceneObject
from zscir.data.synthetic.vocab import BACKGROUNDS, CELL_NAMES, COLOURS, CORNER_CELLS, SHAPES, SIZES

KINDS: tuple[str, ...] = ("recolour", "reshape", "resize", "move", "add", "remove", "background")
OBJECT_KINDS = frozenset({"recolour", "reshape", "resize", "move", "remove"})  # need a referent `cell`

# Slots: {ref} the edited object ("the red circle"), {colour}, {shape}, {to} a cell name (+ " corner"),
# {obj} a new object ("a small blue hexagon in the center"), {bg} a background colour.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("make {ref} {colour}", "change the color of {ref} to {colour}", "paint {ref} {colour}",
                 "turn {ref} {colour}", "change {ref}'s color to {colour}"),
    "reshape": ("turn {ref} into a {shape}", "replace {ref} with a {shape}", "change {ref} into a {shape}",
                "make {ref} a {shape}", "change {ref}'s shape to a {shape}"),
    "move": ("move {ref} to the {to}", "put {ref} in the {to}", "shift {ref} to the {to}", "place {ref} at the {to}"),
    "add": ("add {obj}", "insert {obj}", "put {obj}"),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}"),
    "background": ("change the background to {bg}", "make the background {bg}", "use a {bg} background",
                   "put it on a {bg} background"),
}
# resize templates carry their value in the wording
RESIZE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "large": ("make {ref} bigger", "make {ref} larger", "enlarge {ref}", "make {ref} large"),
    "small": ("make {ref} smaller", "shrink {ref}", "make {ref} small"),
}

# FashionIQ-style captions (`style="attribute"`): what the target is or has, relative to the reference
# ("the circle is green", "has a black background"), as FashionIQ's annotators wrote them ("is red and
# has long sleeves"); the edit-command templates above are the CIRR style.
ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("{ref} is {colour}", "has {ref} in {colour}", "{ref} is {colour} instead"),
    "reshape": ("{ref} is a {shape}", "has a {shape} instead of {ref}", "{ref} is a {shape} instead"),
    "move": ("{ref} is at the {to}", "has {ref} in the {to}"),
    "add": ("also has {obj}", "has {obj} as well"),
    "remove": ("is without {ref}", "does not have {ref}"),
    "background": ("is on a {bg} background", "has a {bg} background", "{bg} background"),
}
ATTRIBUTE_RESIZE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "large": ("{ref} is bigger", "{ref} is larger", "has a bigger version of {ref}"),
    "small": ("{ref} is smaller", "has a smaller version of {ref}"),
}
STYLES = ("command", "attribute")


@dataclass(frozen=True)
class Edit:
    """One edit. `cell` is the edited object's cell in the reference (object kinds only).

    Values by kind: recolour -> colour; reshape -> shape; resize -> size; move -> to_cell;
    add -> colour, shape and optionally size / to_cell (None = any: an under-specified edit that
    several targets satisfy); background -> background; remove -> nothing.
    """

    kind: str
    cell: int | None = None
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    to_cell: int | None = None
    background: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form without the unused (None) fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Edit":
        """Inverse of `to_dict`."""
        return cls(**data)

    @property
    def fully_specified(self) -> bool:
        """False for an add edit that leaves the size or the position open."""
        return self.kind != "add" or (self.size is not None and self.to_cell is not None)


# ---------------------------------------------------------------- applying and checking


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The target scene of a fully specified edit.

    Args:
        scene: the reference scene.
        edit: the edit; must be feasible (the referent exists, a new value differs from the old one,
            the destination cell is free, the object count stays in 1..3).
    Returns:
        The edited Scene.
    Raises:
        ValueError: if the edit is under-specified or infeasible on this scene.
    """
    if not edit.fully_specified:
        raise ValueError(f"cannot apply an under-specified edit {edit}")
    if edit.kind == "background":
        if edit.background == scene.background:
            raise ValueError("background edit to the same background")
        return Scene(edit.background, scene.objects)
    if edit.kind == "add":
        if scene.object_at(edit.to_cell) is not None:
            raise ValueError(f"cell {edit.to_cell} is occupied")
        new = SceneObject(cell=edit.to_cell, shape=edit.shape, colour=edit.colour, size=edit.size)
        return Scene(scene.background, scene.objects + (new,))
    obj = scene.object_at(edit.cell) if edit.cell is not None else None
    if obj is None:
        raise ValueError(f"{edit.kind} edit: no object in cell {edit.cell}")
    others = tuple(o for o in scene.objects if o is not obj)
    if edit.kind == "remove":
        return Scene(scene.background, others)
    field, value = {"recolour": ("colour", edit.colour), "reshape": ("shape", edit.shape),
                    "resize": ("size", edit.size), "move": ("cell", edit.to_cell)}[edit.kind]
    if getattr(obj, field) == value:
        raise ValueError(f"{edit.kind} edit does not change anything ({field} is already {value!r})")
    if edit.kind == "move" and scene.object_at(value) is not None:
        raise ValueError(f"cell {value} is occupied")
    return Scene(scene.background, others + (obj.replace(**{field: value}),))


def edit_matches(reference: Scene, target: Scene, edit: Edit) -> bool:
    """Whether `target` is what `edit` asks of `reference`, checked from the definition of each kind.

    Written independently of `apply_edit` (which constructs the target): here the two scenes are
    compared cell by cell. Under-specified add edits accept any size / free cell.

    Args:
        reference: the reference scene.
        target: a candidate target scene.
        edit: the edit.
    Returns:
        True when the target differs from the reference in exactly the way the edit says.
    """
    ref = {o.cell: o for o in reference.objects}
    tgt = {o.cell: o for o in target.objects}
    if edit.kind == "background":
        return edit.background != reference.background and target.background == edit.background and ref == tgt
    if target.background != reference.background:
        return False
    if edit.kind == "add":
        new_cells = set(tgt) - set(ref)
        if set(ref) - set(tgt) or len(new_cells) != 1 or any(ref[c] != tgt[c] for c in ref):
            return False
        new = tgt[new_cells.pop()]
        return (new.colour == edit.colour and new.shape == edit.shape
                and edit.size in (None, new.size) and edit.to_cell in (None, new.cell))
    if edit.cell not in ref:
        return False
    unchanged = [c for c in ref if c != edit.cell]
    if any(tgt.get(c) != ref[c] for c in unchanged):
        return False
    old = ref[edit.cell]
    if edit.kind == "remove":
        return set(tgt) == set(unchanged) and len(ref) >= 2
    if edit.kind == "move":
        new = tgt.get(edit.to_cell)
        return (set(tgt) == set(unchanged) | {edit.to_cell} and edit.to_cell not in ref and new is not None
                and (new.shape, new.colour, new.size) == (old.shape, old.colour, old.size))
    new = tgt.get(edit.cell)
    if set(tgt) != set(ref) or new is None:
        return False
    kept = {"recolour": ("shape", "size"), "reshape": ("colour", "size"), "resize": ("shape", "colour")}[edit.kind]
    changed = {"recolour": "colour", "reshape": "shape", "resize": "size"}[edit.kind]
    wanted = getattr(edit, changed)
    return (all(getattr(new, f) == getattr(old, f) for f in kept)
            and getattr(new, changed) == wanted != getattr(old, changed))


def check_edit(reference: Scene, target: Scene, captions: str | Sequence[str]) -> bool:
    """Whether the relative caption(s) turn `reference` into `target`.

    One caption: parse it and check the edit. Several captions (FashionIQ's two annotators): either
    paraphrases of one edit, or one edit each on different parts of the scene, applied together.

    Args:
        reference: the reference scene.
        target: the target scene.
        captions: one relative caption or a list of them.
    Returns:
        True if the captions describe exactly the change from reference to target.
    """
    if isinstance(captions, str):
        captions = [captions]
    try:
        edits = list(dict.fromkeys(parse_relative_caption(reference, c) for c in captions))
    except ValueError:
        return False
    if len(edits) == 1:
        return edit_matches(reference, target, edits[0])
    if len({e.cell if e.kind in OBJECT_KINDS else e.kind for e in edits}) != len(edits):
        return False  # two edits of the same object: not a decomposition of the change
    scene = reference
    for edit in edits:
        if edit.kind not in ("recolour", "reshape", "resize", "background"):
            return False
        nxt = _try_apply(scene, edit)
        if nxt is None or not edit_matches(scene, nxt, edit):
            return False
        scene = nxt
    return scene == target


def _try_apply(scene: Scene, edit: Edit) -> Scene | None:
    try:
        return apply_edit(scene, edit)
    except ValueError:
        return None


# ---------------------------------------------------------------- sampling


def feasible_kinds(scene: Scene) -> list[str]:
    """Edit kinds applicable to the scene (add needs a free slot, remove needs two objects)."""
    n = len(scene.objects)
    return [k for k in KINDS if not (k == "add" and n >= MAX_OBJECTS) and not (k == "remove" and n < 2)]


def sample_edit(scene: Scene, rng: random.Random, kinds: Sequence[str] | None = None,
                underspecified_add: bool = False) -> Edit:
    """A random feasible edit of the scene.

    Args:
        scene: the reference scene.
        rng: random source.
        kinds: allowed kinds (default all); the kind is drawn uniformly among the feasible ones.
        underspecified_add: an add edit leaves size and position open (CIRCO-style multiple targets).
    Returns:
        An Edit whose new value differs from the current one.
    Raises:
        ValueError: if none of `kinds` is feasible on this scene.
    """
    options = [k for k in feasible_kinds(scene) if kinds is None or k in kinds]
    if not options:
        raise ValueError(f"no feasible edit among {kinds} for a scene with {len(scene.objects)} objects")
    kind = rng.choice(options)
    if kind == "background":
        return Edit("background", background=rng.choice([b for b in BACKGROUNDS if b != scene.background]))
    if kind == "add":
        if underspecified_add:
            return Edit("add", colour=rng.choice(tuple(COLOURS)), shape=rng.choice(SHAPES))
        return Edit("add", colour=rng.choice(tuple(COLOURS)), shape=rng.choice(SHAPES), size=rng.choice(SIZES),
                    to_cell=rng.choice(scene.free_cells()))
    obj = rng.choice(scene.objects)
    if kind == "remove":
        return Edit("remove", cell=obj.cell)
    if kind == "move":
        return Edit("move", cell=obj.cell, to_cell=rng.choice(scene.free_cells()))
    if kind == "recolour":
        return Edit("recolour", cell=obj.cell, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
    if kind == "reshape":
        return Edit("reshape", cell=obj.cell, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    return Edit("resize", cell=obj.cell, size=next(s for s in SIZES if s != obj.size))


# ---------------------------------------------------------------- words


def _matching(scene: Scene, size: str | None, colour: str | None, shape: str, cell: int | None) -> list[SceneObject]:
    return [o for o in scene.objects if o.shape == shape and size in (None, o.size)
            and colour in (None, o.colour) and cell in (None, o.cell)]


def referring_expression(scene: Scene, cell: int, rng: random.Random | None = None) -> str:
    """The object in `cell` named unambiguously within the scene.

    The shortest unique description is preferred (shape; colour + shape; size + shape; size + colour
    + shape; shape + position). With an rng, one time in four a longer unique description is used.

    Args:
        scene: the scene the expression must be unique in.
        cell: the cell of the object to name.
        rng: paraphrase source (None: the canonical, shortest form).
    Returns:
        e.g. "the circle", "the red circle", "the star in the upper left corner".
    """
    obj = scene.object_at(cell)
    if obj is None:
        raise ValueError(f"no object in cell {cell}")
    forms = [(None, None), (None, obj.colour), (obj.size, None), (obj.size, obj.colour)]
    unique = [(s, c) for s, c in forms if len(_matching(scene, s, c, obj.shape, None)) == 1]
    if unique and (rng is None or rng.random() < 0.75):
        size, colour = unique[0]
        return " ".join(w for w in ("the", size, colour, obj.shape) if w)
    if unique and rng.random() < 0.5:
        size, colour = rng.choice(unique)
        return " ".join(w for w in ("the", size, colour, obj.shape) if w)
    # position always disambiguates (one object per cell)
    colour = obj.colour if rng is not None and rng.random() < 0.5 else None
    return " ".join(w for w in ("the", colour, obj.shape, position_phrase(cell, rng)) if w)


def _new_object_phrase(edit: Edit, rng: random.Random | None) -> str:
    words = " ".join(w for w in ("a", edit.size, edit.colour, edit.shape) if w)
    return words if edit.to_cell is None else f"{words} {position_phrase(edit.to_cell, rng)}"


def _destination(cell: int, rng: random.Random | None) -> str:
    name = cell_name(cell, rng)
    corner = cell in CORNER_CELLS and rng is not None and rng.random() < 0.3
    return f"{name} corner" if corner else name


def relative_caption(reference: Scene, edit: Edit, rng: random.Random | None = None, style: str = "command") -> str:
    """A relative caption for the edit, e.g. "make the circle green", "remove the red triangle".

    Args:
        reference: the reference scene (referring expressions must be unique in it).
        edit: the edit to describe.
        rng: paraphrase source; None gives the canonical wording (first template).
        style: "command" (CIRR-like: "make the circle green") or "attribute" (FashionIQ-like, what the
            target is or has: "the circle is green", "has a black background").
    Returns:
        Lower-case words (an apostrophe in possessives), no final punctuation.
    """
    if style not in STYLES:
        raise ValueError(f"unknown caption style {style!r}; expected one of {STYLES}")
    by_kind, by_size = (TEMPLATES, RESIZE_TEMPLATES) if style == "command" else (
        ATTRIBUTE_TEMPLATES, ATTRIBUTE_RESIZE_TEMPLATES)
    if edit.kind == "resize":
        templates = by_size[edit.size]
    else:
        templates = by_kind[edit.kind]
    if edit.kind == "add" and edit.to_cell is None:
        templates = tuple(t for t in templates if not t.startswith("put"))  # "put a red star" alone is odd
    template = templates[0] if rng is None else rng.choice(templates)
    slots = {
        "ref": referring_expression(reference, edit.cell, rng) if edit.kind in OBJECT_KINDS else None,
        "colour": edit.colour,
        "shape": edit.shape,
        "to": _destination(edit.to_cell, rng) if edit.kind == "move" else None,
        "obj": _new_object_phrase(edit, rng) if edit.kind == "add" else None,
        "bg": edit.background,
    }
    return template.format(**slots)


# ---------------------------------------------------------------- parsing (the inverse of relative_caption)

def _alt(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_CELL_WORDS = {name: cell for cell, names in enumerate(CELL_NAMES) for name in names}
_POS = rf"(?:at|in) the (?:{_alt(_CELL_WORDS)})(?: corner)?"
_REF = rf"the (?:(?:{_alt(SIZES)}) )?(?:(?:{_alt(COLOURS)}) )?(?:{_alt(SHAPES)})(?: {_POS})?"
_OBJ = rf"a (?:(?:{_alt(SIZES)}) )?(?:{_alt(COLOURS)}) (?:{_alt(SHAPES)})(?: {_POS})?"
_SLOT_PATTERNS = {"ref": _REF, "colour": _alt(COLOURS), "shape": _alt(SHAPES), "obj": _OBJ,
                  "to": rf"(?:{_alt(_CELL_WORDS)})(?: corner)?", "bg": _alt(BACKGROUNDS)}
_PHRASE = re.compile(
    rf"(?:the|a) (?:(?P<size>{_alt(SIZES)}) )?(?:(?P<colour>{_alt(COLOURS)}) )?(?P<shape>{_alt(SHAPES)})"
    rf"(?: (?:at|in) the (?P<cell>{_alt(_CELL_WORDS)})(?: corner)?)?$")


def _template_regex(template: str) -> re.Pattern:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>{_SLOT_PATTERNS[field]})")
    return re.compile("".join(parts) + "$")


_PARSERS: list[tuple[str, str | None, re.Pattern]] = (
    [(kind, None, _template_regex(t)) for by_kind in (TEMPLATES, ATTRIBUTE_TEMPLATES)
     for kind, ts in by_kind.items() for t in ts]
    + [("resize", size, _template_regex(t)) for by_size in (RESIZE_TEMPLATES, ATTRIBUTE_RESIZE_TEMPLATES)
       for size, ts in by_size.items() for t in ts])


def _phrase(text: str) -> tuple[str | None, str | None, str, int | None]:
    m = _PHRASE.match(text)
    cell = _CELL_WORDS[m["cell"]] if m["cell"] else None
    return m["size"], m["colour"], m["shape"], cell


def resolve_reference(scene: Scene, expression: str) -> int:
    """The cell of the one object of `scene` that a referring expression names.

    Args:
        scene: the scene.
        expression: e.g. "the red circle", "the star at the top left".
    Returns:
        The object's cell.
    Raises:
        ValueError: if the expression names no object or more than one.
    """
    if not _PHRASE.match(expression):
        raise ValueError(f"not a referring expression: {expression!r}")
    found = _matching(scene, *_phrase(expression))
    if len(found) != 1:
        raise ValueError(f"{expression!r} names {len(found)} objects of the scene, expected exactly one")
    return found[0].cell


def parse_relative_caption(reference: Scene, caption: str) -> Edit:
    """Read a relative caption of the grammar back into an Edit, resolving its referent in `reference`.

    Args:
        reference: the reference scene.
        caption: a caption produced by `relative_caption` (any paraphrase).
    Returns:
        The Edit it describes.
    Raises:
        ValueError: if the caption is not in the grammar, is ambiguous, or names no unique object.
    """
    parsed = set()
    for kind, size_value, regex in _PARSERS:
        m = regex.match(caption)
        if not m:
            continue
        slots = m.groupdict()
        cell = resolve_reference(reference, slots["ref"]) if "ref" in slots else None
        if kind == "add":
            size, colour, shape, to_cell = _phrase(slots["obj"])
            parsed.add(Edit("add", colour=colour, shape=shape, size=size, to_cell=to_cell))
        elif kind == "move":
            to = slots["to"].removesuffix(" corner")
            parsed.add(Edit("move", cell=cell, to_cell=_CELL_WORDS[to]))
        elif kind == "resize":
            parsed.add(Edit("resize", cell=cell, size=size_value))
        else:
            parsed.add(Edit(kind, cell=cell, colour=slots.get("colour") if kind == "recolour" else None,
                            shape=slots.get("shape") if kind == "reshape" else None, background=slots.get("bg")))
    if len(parsed) != 1:
        raise ValueError(f"relative caption {caption!r} has {len(parsed)} readings in the grammar, expected one")
    return parsed.pop()
