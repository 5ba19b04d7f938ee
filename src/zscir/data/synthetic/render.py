"""Rasterise a scene graph with PIL: deterministic from (scene, jitter seed), fast at 48x48.

Shapes are drawn at `supersample` times the size and box-downsampled, which gives anti-aliased
edges (PIL polygons are not anti-aliased) at a small cost.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from zscir.data.synthetic.scene import Scene, SceneObject
from zscir.data.synthetic.vocab import BACKGROUNDS, COLOURS, GRID, SIZE_RADIUS

# Jitter amplitudes: centre offset as a fraction of the cell side, radius scale, rotation in degrees.
JITTER_SHIFT = 0.10
JITTER_SCALE = 0.10
JITTER_ROTATION = 12.0

# Vertex lists for unit-radius shapes at rotation 0: (radius factor, angle in degrees; 0 = up, clockwise).
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(1.15, 45.0 + 90.0 * k) for k in range(4)],
    "triangle": [(1.25, 120.0 * k) for k in range(3)],
    "hexagon": [(1.05, 30.0 + 60.0 * k) for k in range(6)],
    "star": [(1.3 if k % 2 == 0 else 0.55, 36.0 * k) for k in range(10)],
}


def _vertices(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    if shape == "diamond":  # a rhombus taller than wide, so it never looks like a rotated square
        pts = [(0.0, -1.25), (0.8, 0.0), (0.0, 1.25), (-0.8, 0.0)]
    else:
        pts = [(f * math.sin(math.radians(a)), -f * math.cos(math.radians(a))) for f, a in _POLYGONS[shape]]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, rng: random.Random | None) -> None:
    cell = side / GRID
    row, col = divmod(obj.cell, GRID)
    dx = dy = 0.0
    scale, rotation = 1.0, 0.0
    if rng is not None:
        dx = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)
        dy = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT)
        scale = 1.0 + rng.uniform(-JITTER_SCALE, JITTER_SCALE)
        rotation = rng.uniform(-JITTER_ROTATION, JITTER_ROTATION)
    cx, cy = (col + 0.5 + dx) * cell, (row + 0.5 + dy) * cell
    r = SIZE_RADIUS[obj.size] * cell * scale
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_vertices(obj.shape, cx, cy, r, rotation), fill=fill)


def render_scene(scene: Scene, size: int = 48, jitter_seed: int | None = 0, supersample: int = 2) -> Image.Image:
    """Render a scene graph to an RGB image.

    Args:
        scene: the scene graph.
        size: output side in pixels (square image).
        jitter_seed: seed of the per-object position/size/rotation jitter; None draws without jitter.
            The same (scene, seed, size) always gives the same pixels.
        supersample: draw at this multiple of `size`, then box-downsample (1 = no anti-aliasing).
    Returns:
        A `size` x `size` RGB PIL image.
    """
    if size < 12:
        raise ValueError(f"image size must be >= 12 pixels, got {size}")
    side = size * supersample
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    rng = None if jitter_seed is None else random.Random(jitter_seed)
    for obj in scene.objects:
        _draw_object(draw, obj, side, rng)
    return image.reduce(supersample) if supersample > 1 else image
