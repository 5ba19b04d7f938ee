"""Budget curves of the demo's methods on a development seed: metric against training steps.

Each part trains one method on the demo world of seed `ZSCIR_CURVES_SEED` (default 9: not one of the
seeds 0-2 that BENCHMARKS.md reports, so no budget is chosen on a reported number) with the shipped
world CLIP, and evaluates it during training on every val split through the demo's own evaluators.
One JSON line per evaluation goes to stdout and to `<dir>/curve-<part>.jsonl` (CIRR R@1 / R@10,
FashionIQ R@10 averaged over categories, CIRCO mAP@10):

    lincir [STEPS]          LinCIR Phi (batch 256), evaluated every 50 steps (default 300 steps)
    rtd PHI_STEPS STEPS     RTD (batch 64) on the Phi of `lincir PHI_STEPS`, evaluated every 25 steps
    oti MARKS               SEARLE-OTI of every val reference, the EMA token read at each step in MARKS
                            (e.g. 40,60,80,100,120: one run, since step k of a run is the k-step run)
    searle IMAGES STEPS     SEARLE distillation (batch 256) on the OTI tokens of the first IMAGES (e.g.
                            300,600) CIRR-train images, evaluated every 100 steps

Usage: ZSCIR_CURVES_DIR=/tmp/curves python benchmarks/measure_budget_curves.py PART ARGS...
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    from zscir.demo import methods
    from zscir.demo.methods import MethodBudget
    from zscir.demo.pipeline import evaluate_method, world_evaluators, world_folder
    from zscir.demo.world_models import build_world_data, world_clip
    from zscir.models.backbone import Backbone
    from zscir.retrieval.features import FeatureCache

    torch.set_num_threads(1)
    part, args = sys.argv[1], sys.argv[2:]
    seed = int(os.environ.get("ZSCIR_CURVES_SEED", "9"))
    root = Path(os.environ.get("ZSCIR_CURVES_DIR", "budget-curves"))
    root.mkdir(parents=True, exist_ok=True)
    world = world_folder(root / "cache", False, seed)
    build_world_data(world, seed, None)
    backbone = Backbone.load(str(world_clip(root / "cache", progress=False)[0]))
    cache = FeatureCache(world / "features", progress=False)
    evaluators = world_evaluators(backbone, world / "data", cache)
    log = (root / f"curve-{part}.jsonl").open("a")
    start = time.time()

    def record(tag: str, step: int, row: dict) -> dict:
        line = {"part": part, "seed": seed, "tag": tag, "step": step, "seconds": round(time.time() - start, 1),
                "cirr_R@1": row["cirr"]["R@1"], "cirr_R@10": row["cirr"]["R@10"],
                "fiq_R@10": row["fashioniq"]["R@10"], "circo_mAP@10": row["circo"]["mAP@10"]}
        print(json.dumps(line), flush=True)
        log.write(json.dumps(line) + "\n")
        log.flush()
        return {"R@1": row["cirr"]["R@1"]}

    def loop(cls, run: Path, steps: int, batch: int, every: int, **extra):
        return cls(output_dir=str(run), max_steps=steps, batch_size=batch, checkpoint_every=steps,
                   validate_every=every, resume=False, cpu=True, report_to="none", progress=False, **extra)

    if part == "lincir":
        from zscir.training.config import LinCIRConfig
        from zscir.training.phi import read_captions, train_lincir

        steps = int(args[0]) if args else 300
        captions, _ = read_captions(world / "data" / "corpora" / "lincir_captions.txt")
        seen = iter(range(50, steps + 1, 50))
        train_lincir(backbone, captions, loop(LinCIRConfig, root / f"runs/lincir-{steps}", steps, 256, 50),
                     validate=lambda phi: record("lincir", next(seen), evaluate_method(
                         evaluators, "lincir", method="phi", phi=phi)[0]))
    elif part == "rtd":
        from zscir.models.phi import load_inversion_network
        from zscir.training.config import RTDConfig
        from zscir.training.rtd import read_triplets, train_rtd

        phi_steps, steps = int(args[0]), int(args[1])
        phi = load_inversion_network(root / f"runs/lincir-{phi_steps}/final").eval()
        record(f"lincir-{phi_steps}", 0, evaluate_method(evaluators, "lincir", method="phi", phi=phi)[0])
        triplets, _ = read_triplets(world / "data" / "corpora" / "rtd_triplets.jsonl")
        seen = iter(range(25, steps + 1, 25))
        train_rtd(backbone, phi, triplets, loop(RTDConfig, root / f"runs/rtd-{phi_steps}-{steps}", steps, 64, 25),
                  validate=lambda tower: record(f"rtd-on-{phi_steps}", next(seen), evaluate_method(
                      evaluators, "rtd", method="phi", phi=phi, text_tower=tower)[0]))
    elif part == "oti":
        from zscir.evaluation.metrics import mean_metrics
        from zscir.oti.optimise import initial_tokens, invert_images, token_embedding_std

        bank = methods.world_concept_bank(backbone)
        marks = sorted(int(m) for m in args[0].split(","))
        config = methods.oti_config(MethodBudget())
        config.steps, config.batch_size = marks[-1], 100_000
        tokens_at: dict[int, dict[str, list]] = {m: {} for m in marks}
        std = token_embedding_std(backbone) if config.init_std is None else config.init_std
        for bench, evs in evaluators.items():
            for ev in evs:
                refs = [q.reference for q in ev.split.queries]
                unique = list(dict.fromkeys(refs))
                state = {"ema": initial_tokens(unique, backbone.hidden_size, std, config.seed)}
                snaps = {}

                def on_step(step, raw, state=state, snaps=snaps):
                    state["ema"] = state["ema"] * config.ema_decay + raw * (1 - config.ema_decay)
                    if step + 1 in marks:
                        snaps[step + 1] = state["ema"].clone()

                result = invert_images(backbone, ev.features().lookup(unique), bank, config, names=unique,
                                       progress=False, on_step=on_step)
                assert torch.allclose(snaps[marks[-1]], result.tokens, atol=1e-5)  # the EMA read is OTI's own
                rows = torch.tensor([unique.index(r) for r in refs])
                for m in marks:
                    tokens_at[m].setdefault(bench, []).append((ev, snaps[m][rows]))
        for m in marks:
            row = {}
            for bench, pairs in tokens_at[m].items():
                metrics = [ev.evaluate(method="phi", pseudo_tokens=tokens).metrics for ev, tokens in pairs]
                row[bench] = mean_metrics(metrics) if len(metrics) > 1 else metrics[0]
            record("searle-oti", m, row)
    elif part == "searle":
        from safetensors.torch import load_file, save_file

        from zscir.data.records import load_benchmark
        from zscir.oti.optimise import invert_images
        from zscir.training.searle import SearleConfig, distill_phi

        bank = methods.world_concept_bank(backbone)
        config = methods.oti_config(MethodBudget())
        config.batch_size = 100_000
        sizes, steps = [int(n) for n in args[0].split(",")], int(args[1])
        train = load_benchmark("cirr", world / "data" / "cirr", "train")[0]
        names = train.gallery[: max(sizes)]
        features = cache.image_features(backbone, {n: train.images[n] for n in names})
        token_file = root / f"runs/searle-tokens-{len(names)}.safetensors"
        if token_file.is_file():
            tokens = load_file(str(token_file))["tokens"]
        else:
            tokens = invert_images(backbone, features.lookup(names), bank, config, names=names, progress=False).tokens
            token_file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"tokens": tokens.contiguous()}, str(token_file))
        for n in sizes:
            seen = iter(range(100, steps + 1, 100))
            distill_phi(backbone, features.lookup(names[:n]), tokens[:n], bank,
                        loop(SearleConfig, root / f"runs/searle-{n}-{steps}", steps, 256, 100, epochs=None),
                        validate=lambda phi, n=n, seen=seen: record(f"searle-{n}img", next(seen), evaluate_method(
                            evaluators, "searle", method="phi", phi=phi)[0]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
