"""Render speed of the synthetic world and build time of the default world, in one run.

Prints one line: renders/s with and without anti-aliasing (supersample 2 vs 1), PNG encodes/s, and the
seconds to build the default world (`build_world` with default sizes into a temp folder).

    /work/venv/bin/python benchmarks/bench_synthetic_world.py
"""

from __future__ import annotations

import io
import random
import tempfile
import time
from pathlib import Path

from zscir.data.synthetic import WorldSizes, build_world, random_scene, render_scene


def _rate(fn, items) -> float:
    start = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - start)


def main(n: int = 5000) -> None:
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(n)]
    aa = _rate(lambda s: render_scene(s, 48, 1), scenes)
    plain = _rate(lambda s: render_scene(s, 48, 1, supersample=1), scenes)
    images = [render_scene(s, 48, 1) for s in scenes[:2000]]
    png = _rate(lambda im: im.save(io.BytesIO(), format="PNG"), images)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_world(tmp, seed=0, sizes=WorldSizes())
        n_images = sum(1 for _ in Path(tmp).rglob("*.png"))
    print(f"bench_synthetic_world n={n} size=48 render_ss2 {aa:.0f}/s render_ss1 {plain:.0f}/s png {png:.0f}/s "
          f"default_world {manifest['build_seconds']:.1f}s ({n_images} images)")


if __name__ == "__main__":
    main()
