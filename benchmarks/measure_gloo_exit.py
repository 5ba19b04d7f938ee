"""How often two gloo ranks abort at exit, by teardown (BENCHMARKS.md, "Launched processes that aborted at exit").

Each launch is two CPU ranks under torchrun. Their last call is `all_gather_object`, and then the interpreter
exits. Variants:
- none: no teardown;
- destroy: `destroy_process_group` at exit;
- destroy+refs: the same, while 10 references to the group are kept, as `import torch._dynamo` after the
  group keeps them;
- zscir: `zscir.retrieval.shards.tear_down_process_group_at_exit()` before the group.

A launch that aborts exits non-zero, with "terminate called without an active exception" on stderr.

    OMP_NUM_THREADS=1 python benchmarks/measure_gloo_exit.py [launches per variant, default 20] [variant ...]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

RANK_SCRIPT = '''
import atexit, os, sys
import torch.distributed as dist
variant = os.environ["VARIANT"]
if variant == "zscir":
    from zscir.retrieval.shards import tear_down_process_group_at_exit
    tear_down_process_group_at_exit()
dist.init_process_group("gloo")
if variant in ("destroy", "destroy+refs"):
    atexit.register(dist.destroy_process_group)
KEEP = [dist.group.WORLD] * 10 if variant == "destroy+refs" else []
for i in range(20):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, {"rank": dist.get_rank(), "i": i, "x": list(range(100))})
'''
VARIANTS = ("none", "destroy", "destroy+refs", "zscir")


def launch(script: Path, variant: str) -> bool:
    """One two-rank launch; True when it aborted (non-zero exit)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "VARIANT": variant, "OMP_NUM_THREADS": "1"}
    port = str(random.randint(20000, 40000))
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", port, str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    if done.returncode and "terminate called without an active exception" not in done.stderr:
        print(f"  ({variant}: exit {done.returncode} for another reason: {done.stderr[-300:]!r})")
    return done.returncode != 0


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    variants = sys.argv[2:] or VARIANTS
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "rank.py"
        script.write_text(RANK_SCRIPT)
        for variant in variants:
            aborted = sum(launch(script, variant) for _ in range(runs))
            print(f"{variant:14} {aborted} of {runs} launches aborted", flush=True)


if __name__ == "__main__":
    main()
