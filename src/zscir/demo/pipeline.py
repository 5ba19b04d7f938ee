"""`zscir demo`: build the synthetic world, train every method on the CPU, evaluate, report.

Stages (each cached under `<cache>/world*/`, reused on rerun, resumable when interrupted):
  1. the world (benchmarks in the real CIRR / FashionIQ / CIRCO layouts, corpora) and its tiny CLIP;
  2. baselines: image only, text only, sum of normalised embeddings, and the text upper bound;
  3. LinCIR (Phi trained on the world's captions), LinCIR + RTD (text tower fine-tuned on triplets);
  4. SEARLE-OTI (per-image inversion) and SEARLE (Phi distilled here);
  5. LinCIR + CIG (pseudo targets from the tiny SDXL: the shipped base, its UNet fine-tuned here).
Numbers are computed by the run; nothing in the table is typed by hand.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.data.records import load_benchmark
from zscir.data.synthetic.captions import describe_scene
from zscir.data.synthetic.scene import Scene
from zscir.data.synthetic.vocab import PROMPT_PREFIX, PSEUDO_TOKEN
from zscir.data.synthetic.world import WorldSizes
from zscir.demo import methods
from zscir.demo.acceptance import COMPARED, acceptance, mean_std_rows, within_noise
from zscir.demo.calibration import REAL_BASELINES, REAL_CLIP, layout_properties, self_retrieval, world_clip_geometry
from zscir.demo.methods import MethodBudget
from zscir.demo.report import cirr_edit_types, format_results_table, query_grid, recall_by_edit_type
from zscir.demo.world_generator import world_generator_base
from zscir.demo.world_models import build_world_data, world_clip
from zscir.errors import ZscirError
from zscir.evaluation.fusion import evaluate_fused, pseudo_target_queries
from zscir.evaluation.metrics import mean_metrics
from zscir.evaluation.runner import Evaluator
from zscir.generation.cig import image_path
from zscir.models.backbone import Backbone
from zscir.oti.store import ChunkClaims
from zscir.retrieval.features import FeatureCache
from zscir.utils.io import write_bytes_atomic, write_json_atomic

BENCHMARKS = {"cirr": "val", "fashioniq": "val", "circo": "val"}
STAGES = ("baselines", "lincir", "rtd", "searle", "cig")


@dataclass
class DemoConfig:
    """What `zscir demo` runs.

    Attributes:
        cache_dir: root of the cache (`$ZSCIR_CACHE` or ~/.cache/zscir by default).
        fast: a small world and seconds-long trainings (smoke test; numbers meaningless).
        skip: stages to leave out (names in STAGES).
        out_dir: where results.json, table.txt and the PNG grid go (default `<cache>/demo-results[-fast]`).
        seed: world seed (the first one with `seeds` > 1).
        seeds: repeat world, training and evaluation for seeds `seed`, `seed + 1`, ... and report mean ± std.
        train_clip: train the world CLIP from scratch instead of unpacking the shipped one (the base generator
            is then trained here too: it is tied to the CLIP's text tower).
        train_generator: pretrain the base generator here instead of using the shipped one.
        progress: show progress bars.
        budget: the methods' training sizes.
        parallel: on a machine with 2+ cores, run the SEARLE stage in a second process beside LinCIR, RTD
            and CIG (they share nothing but the cached image features), each with half the cores.
    """

    cache_dir: Path
    fast: bool = False
    skip: tuple[str, ...] = ()
    out_dir: Path | None = None
    seed: int = 0
    seeds: int = 1
    train_clip: bool = False
    train_generator: bool = False
    progress: bool = True
    budget: MethodBudget = field(default_factory=MethodBudget)
    parallel: bool = True


class Timer:
    """Wall time per stage, reported in the results."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(timer.seconds.get(name, 0.0) + time.perf_counter() - self.start, 1)

        return _Span()


def _say(message: str) -> None:
    print(f"[zscir demo] {message}", flush=True)


def world_folder(cache_dir: Path, fast: bool, seed: int) -> Path:
    """The world folder of one seed (`world` / `world-fast` for seed 0, as the registry expects)."""
    name = "world-fast" if fast else "world"
    return Path(cache_dir) / (name if seed == 0 else f"{name}-seed{seed}")


def run_demo(config: DemoConfig) -> dict:
    """Run the demo over `config.seeds` seeds; returns the results dict (also `out_dir/results.json`).

    One seed: the results of that run. Several: `rows` and `std` are the mean and standard deviation
    over seeds, `per_seed` holds every seed's own results (also written to `out_dir/seed-{s}/`).
    """
    unknown = set(config.skip) - set(STAGES)
    if unknown:
        raise ZscirError(f"unknown stage(s) to skip: {sorted(unknown)}; stages: {', '.join(STAGES)}")
    if config.seeds < 1:
        raise ZscirError(f"seeds must be at least 1, got {config.seeds}", setting="seeds")
    out_dir = Path(config.out_dir or Path(config.cache_dir) / ("demo-results-fast" if config.fast else "demo-results"))
    start = time.perf_counter()
    seeds = [config.seed + i for i in range(config.seeds)]
    runs = []
    for seed in seeds:
        if len(seeds) > 1:
            _say(f"seed {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
        runs.append(run_seed(config, seed, out_dir / f"seed-{seed}" if len(seeds) > 1 else out_dir))
    if len(runs) == 1:
        results = runs[0]
        results["acceptance"] = [asdict(c) for c in acceptance(results["rows"], None, [results["per_query"]])]
        std = None
    else:
        mean, std = mean_std_rows([r["rows"] for r in runs])
        checks = acceptance(mean, [r["rows"] for r in runs], [r["per_query"] for r in runs])
        first = {k: v for k, v in runs[0].items() if k != "per_query"}  # per query: in each seed's folder
        per_seed = {str(r["world"]["seed"]): {k: r[k] for k in ("rows", "calibration", "seconds", "cig")}
                    for r in runs}
        results = {**first, "rows": mean, "std": std, "seeds": seeds, "acceptance": [asdict(c) for c in checks],
                   "calibration": _mean_calibration([r["calibration"] for r in runs]), "per_seed": per_seed}
    results["seconds"] = {**results["seconds"], "all seeds": round(time.perf_counter() - start, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, results)
    text = render_summary(results, format_results_table(results["rows"], std))
    write_bytes_atomic(out_dir / "table.txt", text.encode())
    print(text)
    print(f"\nresults: {out_dir / 'results.json'}   grid ({results.get('grid_method')}): {results.get('grid')}")
    return results


def _mean_calibration(per_seed: list[dict]) -> dict:
    """Mean over seeds of every numeric calibration property (nested dicts of numbers)."""
    first = per_seed[0]
    out = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _mean_calibration([p[key] for p in per_seed if isinstance(p.get(key), dict)])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [p[key] for p in per_seed if isinstance(p.get(key), (int, float))]
            out[key] = round(sum(values) / len(values), 3)
        else:
            out[key] = value
    return out


def run_seed(config: DemoConfig, seed: int, out_dir: Path) -> dict:
    """One seed of the demo: world, models, every row, calibration properties; writes `out_dir/results.json`."""
    budget = MethodBudget.fast() if config.fast else config.budget
    world = world_folder(config.cache_dir, config.fast, seed)
    timer, start = Timer(), time.perf_counter()

    with timer("world"):
        _say(f"synthetic world (seed {seed}) → {world / 'data'}")
        manifest = build_world_data(world, seed, asdict(WorldSizes.small()) if config.fast else None)
    with timer("clip"):
        source = "trained from scratch" if config.train_clip else "shipped weights"
        clip_dir, clip_report = world_clip(Path(config.cache_dir), config.fast, config.train_clip, config.progress)
        _say(f"world CLIP ({source}): " + ("reused from the cache" if clip_report.get("reused") else
                                          f"ready in {clip_report.get('seconds', 0):.0f} s") + f" → {clip_dir}")
    backbone = Backbone.load(str(clip_dir))
    cache = FeatureCache(world / "features", progress=config.progress)
    data = world / "data"
    calibration = {"clip": world_clip_geometry(backbone, data / "corpora" / "clip_heldout")}
    evaluators = world_evaluators(backbone, data, cache)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    cirr_results, per_query = {}, {}

    def evaluate_row(label: str, per_split_options=None, **options) -> None:
        rows[label], cirr_results[label], per_query[label] = evaluate_method(evaluators, label, per_split_options,
                                                                             **options)

    if "baselines" not in config.skip:
        with timer("baselines"):
            for method, label in (("image", "image only"), ("text", "text only"), ("sum", "image + text (sum)")):
                evaluate_row(label, method=method)
            evaluate_row("upper bound: target's own caption", per_split_options=lambda ev: {
                "queries": target_caption_queries(ev, data, backbone)})
            calibration["layouts"] = layout_properties(rows)
            calibration["reference_in_words"] = reference_in_words(evaluators["cirr"][0], data, backbone)
    phi = tower = None
    pseudo_token = {}
    searle_job = None
    if "searle" not in config.skip:
        threads = torch.get_num_threads()
        # a warm rerun only evaluates SEARLE (~4 s): less than the second process's start-up (~9 s)
        if config.parallel and threads >= 2 and not methods.searle_phi_done(world, backbone, budget):
            _say(f"SEARLE runs in a second process beside LinCIR, RTD and CIG ({threads // 2} + "
                 f"{threads - threads // 2} threads)")
            searle_job = start_searle_worker(world, clip_dir, budget, config.progress, threads // 2)
            torch.set_num_threads(threads - threads // 2)
    cig = None
    try:
        if "lincir" not in config.skip:
            with timer("lincir"):
                _say("LinCIR: training Phi on the world's captions")
                phi = methods.lincir_phi(world, backbone, budget, config.progress)
                evaluate_row("LinCIR (Phi trained here)", method="phi", phi=phi)
                pseudo_token["LinCIR"] = reference_self_retrieval(evaluators["cirr"][0], data, backbone, phi)
        if "rtd" not in config.skip and phi is not None:
            with timer("rtd"):
                _say("RTD: fine-tuning the text tower on the world's text triplets")
                tower = methods.rtd_text_tower(world, backbone, phi, budget, config.progress)
                evaluate_row("LinCIR + RTD", method="phi", phi=phi, text_tower=tower)
        if "cig" not in config.skip and phi is not None:
            with timer("cig"):
                cig = run_cig(world, backbone, phi, evaluators, cache, config, budget)
                if cig is not None:
                    for label, row in cig["rows"].items():
                        rows[label], per_query[label] = row, cig["per_query"][label]
                        _say(f"{label}: CIRR R@1 {row['cirr']['R@1']:.1f}  R@10 {row['cirr']['R@10']:.1f}")
        if searle_job is not None:
            with timer("searle-oti (main)"):  # the references the worker has not claimed yet
                bank = methods.world_concept_bank(backbone)
                invert_references(world, evaluators, bank, budget, config.progress, searle_job.claims)
    except BaseException:
        if searle_job is not None:
            searle_job.stop()
        raise

    if "searle" not in config.skip:
        with timer("searle"):
            if searle_job is None:
                searle = searle_stage(world, backbone, evaluators, cache, budget, config.progress)
            else:
                searle = searle_job.result()
                torch.set_num_threads(threads)
        if searle_job is not None:  # its own wall time, beside LinCIR-RTD-CIG; then how long it was waited for
            timer.seconds["searle waited"] = timer.seconds.pop("searle", 0.0)
            timer.seconds["searle (parallel)"] = searle["seconds"]
            with timer("searle-oti row"):  # every reference is inverted by now (the two processes' stores)
                (searle["rows"]["SEARLE-OTI"], searle["cirr_results"]["SEARLE-OTI"],
                 searle["per_query"]["SEARLE-OTI"]) = searle_oti_row(world, evaluators, bank, budget, config.progress)
            shutil.rmtree(searle_job.claims.folder, ignore_errors=True)
        rows.update(searle["rows"])
        cirr_results.update(searle["cirr_results"])
        per_query.update(searle["per_query"])
        pseudo_token.update(searle["pseudo_token"])
    rows = {label: rows[label] for label in sorted(rows, key=_row_order)}
    cirr_results = {label: cirr_results[label] for label in sorted(cirr_results, key=_row_order)}
    calibration["pseudo_token"] = pseudo_token
    edit_types = cirr_edit_types(data)
    by_edit = {label: recall_by_edit_type(result, edit_types) for label, result in cirr_results.items()}
    grid_method = next((k for k in ("LinCIR + RTD", "LinCIR (Phi trained here)") if k in cirr_results),
                       next(iter(cirr_results), None))
    grid = None
    if grid_method is not None:
        grid = query_grid(cirr_results[grid_method], out_dir / "queries.png", method=grid_method,
                          pseudo_targets=(cig or {}).get("examples"))
    results = {
        "world": {"root": str(data), "seed": manifest["seed"], "counts": manifest["counts"]},
        "clip": clip_report,
        "calibration": calibration,
        "rows": rows,
        "per_query": per_query,
        "cirr_R@1_by_edit_type": by_edit,
        "cig": json.loads(json.dumps({k: v for k, v in (cig or {}).items()
                                      if k not in ("rows", "per_query", "examples")},
                                     default=str)),
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - start, 1)},
        "fast": config.fast,
        "grid": str(grid) if grid else None,
        "grid_method": grid_method,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, results)
    return results


def write_results(out_dir: Path, results: dict) -> None:
    """`results.json`, and the per-query values of a single seed in a compact `per_query.json` beside it
    ({label: {benchmark: {metric: [per split, one value per query]}}}, the input of the paired intervals)."""
    if "per_query" in results:
        write_json_atomic(out_dir / "per_query.json", results["per_query"], indent=None)
    write_json_atomic(out_dir / "results.json", {k: v for k, v in results.items() if k != "per_query"})


ROW_ORDER = ("image only", "text only", "image + text (sum)", "upper bound", "LinCIR (", "LinCIR + RTD", "SEARLE-OTI",
             "SEARLE (", "LinCIR + CIG")


def _row_order(label: str) -> int:
    """Rows in the table's order (baselines, LinCIR, RTD, SEARLE-OTI, SEARLE, CIG), however they finished."""
    return next((i for i, prefix in enumerate(ROW_ORDER) if label.startswith(prefix)), len(ROW_ORDER))


def world_evaluators(backbone, data: Path, cache) -> dict[str, list[Evaluator]]:
    """One `Evaluator` per val split of each benchmark of the world (FashionIQ: one per category)."""
    return {bench: [Evaluator(backbone, s, cache) for s in load_benchmark(bench, data / bench, split)]
            for bench, split in BENCHMARKS.items()}


def evaluate_method(evaluators: dict, label: str, per_split_options=None, **options) -> tuple[dict, object, dict]:
    """Evaluate one method on every benchmark; FashionIQ is averaged over its categories.

    Returns:
        (row {benchmark: metrics}, the CIRR-format val's `EvaluationResult`, per-query values of the metrics
        the orderings compare, {benchmark: {metric: [per split, a list of values in [0, 1]]}}).
    """
    row, cirr_result, per_query = {}, None, {}
    for bench, evs in evaluators.items():
        results = []
        for ev in evs:
            extra = per_split_options(ev) if per_split_options else {}
            results.append(ev.evaluate(**options, **extra))
        row[bench] = mean_metrics([r.metrics for r in results]) if len(results) > 1 else results[0].metrics
        per_query[bench] = compared_values(results, bench)
        if bench == "cirr":
            cirr_result = results[0]
    if "cirr" in row:
        _say(f"{label}: CIRR R@1 {row['cirr']['R@1']:.1f}  R@10 {row['cirr']['R@10']:.1f}")
    return row, cirr_result, per_query


def compared_values(results: list, bench: str) -> dict[str, list[list[float]]]:
    """Per split (`EvalResult`s of one benchmark), the per-query values of the metrics `acceptance` compares."""
    per_split = [r.per_query() for r in results]
    return {metric: [[round(v, 4) for v in values[metric].tolist()] for values in per_split]
            for metric in COMPARED.get(bench, ())}


def searle_stage(world: Path, backbone, evaluators: dict, cache, budget: MethodBudget, progress: bool,
                 claims: ChunkClaims | None = None) -> dict:
    """SEARLE (a Phi distilled from OTI tokens of training images) and SEARLE-OTI (each reference inverted).

    `claims`: in the second process (`start_searle_worker`), after the distillation this call inverts the
    reference chunks it claims first; the main process does the same after CIG and then evaluates the
    SEARLE-OTI row from the token stores. None = invert every reference and evaluate the row here.

    Returns:
        {"rows": {label: row}, "cirr_results": {label: CIRR result}, "per_query": {label: per-query values},
        "pseudo_token": {"SEARLE": self-retrieval}, "seconds": wall time}.
    """
    start = time.perf_counter()
    _say("SEARLE: a Phi distilled from OTI tokens of training images, then OTI on reference images")
    bank = methods.world_concept_bank(backbone)
    phi = methods.searle_phi(world, backbone, cache, bank, budget, progress)
    rows, cirr_results, per_query = {}, {}, {}
    if claims is None:
        rows["SEARLE-OTI"], cirr_results["SEARLE-OTI"], per_query["SEARLE-OTI"] = searle_oti_row(
            world, evaluators, bank, budget, progress)
    else:
        invert_references(world, evaluators, bank, budget, progress, claims)
    label = "SEARLE (Phi distilled here)"
    rows[label], cirr_results[label], per_query[label] = evaluate_method(evaluators, label, method="phi", phi=phi)
    token = reference_self_retrieval(evaluators["cirr"][0], world / "data", backbone, phi)
    return {"rows": rows, "cirr_results": cirr_results, "per_query": per_query, "pseudo_token": {"SEARLE": token},
            "seconds": round(time.perf_counter() - start, 1)}


def searle_oti_row(world: Path, evaluators: dict, bank, budget: MethodBudget,
                   progress: bool) -> tuple[dict, object, dict]:
    """The SEARLE-OTI row: every reference inverted (resumable token stores; inverted ones are reused).

    Returns:
        `evaluate_method`'s (row, CIRR-format val result, per-query values).
    """
    return evaluate_method(evaluators, "SEARLE-OTI", method="phi", per_split_options=lambda ev: {
        "pseudo_tokens": methods.searle_oti_tokens(world, ev, bank, budget, progress)})


def invert_references(world: Path, evaluators: dict, bank, budget: MethodBudget, progress: bool,
                      claims: ChunkClaims) -> None:
    """Invert the reference chunks of every val split that this process claims first, evaluating nothing.

    Both demo processes call this (the worker after its distillation, the main process after CIG), so the
    references go to whichever process is free: they end within one chunk of each other (BENCHMARKS.md).
    """
    for ev in (ev for evs in evaluators.values() for ev in evs):
        methods.searle_oti_tokens(world, ev, bank, budget, progress, claims)


def start_searle_worker(world: Path, clip_dir: Path, budget: MethodBudget, progress: bool, threads: int):
    """`searle_stage` in a second process (spawned, so no torch thread pool is forked).

    The worker loads the same world CLIP and reads the image features the baselines cached; it shares
    no trained artefact with LinCIR, RTD or CIG. It shares the references' OTI with the main process through
    `SearleWorker.claims` (a new claim folder under `world/runs/oti-claims`) and leaves the SEARLE-OTI row
    to it. Returns a `SearleWorker`: `.result()` waits for the stage's dict (re-raising the worker's error),
    `.stop()` ends the worker early.
    """
    import multiprocessing

    claims_root = world / "runs" / "oti-claims"
    shutil.rmtree(claims_root, ignore_errors=True)  # a killed run's claims
    claims = ChunkClaims(claims_root / f"{os.getpid()}-{time.time_ns()}")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_searle_worker, name="zscir-demo-searle", daemon=True,
                              args=(send, str(world), str(clip_dir), asdict(budget), progress, threads,
                                    str(claims.folder)))
    process.start()
    send.close()
    return SearleWorker(process, receive, claims)


class SearleWorker:
    """A running SEARLE worker process (see `start_searle_worker`)."""

    def __init__(self, process, connection, claims: ChunkClaims):
        self.process, self.connection, self.claims = process, connection, claims

    def result(self) -> dict:
        """Wait for the worker's `searle_stage` result; its error is raised here."""
        try:
            status, value = pickle.loads(self.connection.recv_bytes())  # from our own child process only
        except EOFError:
            self.process.join()
            raise ZscirError(f"the SEARLE worker process died (exit code {self.process.exitcode})") from None
        self.process.join()
        if status == "error":
            raise value
        return value

    def stop(self) -> None:
        """End the worker (when the main process fails or is interrupted)."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def _searle_worker(connection, world: str, clip_dir: str, budget: dict, progress: bool, threads: int,
                   claims: str) -> None:
    """The SEARLE worker process: `searle_stage` with its own backbone, evaluators and `threads` threads."""
    try:
        torch.set_num_threads(threads)
        world_dir = Path(world)
        backbone = Backbone.load(clip_dir)
        cache = FeatureCache(world_dir / "features", progress=progress)
        evaluators = world_evaluators(backbone, world_dir / "data", cache)
        result = searle_stage(world_dir, backbone, evaluators, cache, MethodBudget(**budget), progress,
                              ChunkClaims(claims))
        # plain pickle bytes: tensors travel by value (the pipe's own pickler would pass file descriptors
        # of shared memory, which vanish when this process ends)
        connection.send_bytes(pickle.dumps(("ok", result)))
    except BaseException as exc:  # noqa: BLE001 - handed to the main process, which raises it
        error = exc if isinstance(exc, Exception) else ZscirError(f"SEARLE worker: {exc!r}")
        connection.send_bytes(pickle.dumps(("error", error)))
    finally:
        connection.close()

def reference_self_retrieval(evaluator, world_data: Path, backbone, phi) -> dict:
    """How much of a reference "a photo of $" carries, on the CIRR-format val (see `calibration.self_retrieval`).

    Returns:
        {"from_image_R@1": Phi(reference image embedding), "from_caption_R@1": Phi(text embedding of the
        reference's own caption) — the second separates what Phi can carry from what crosses the modality gap}.
    """
    split = evaluator.split
    index = {name: i for i, name in enumerate(split.gallery)}
    queries = [q for q in split.queries if q.reference in index]
    references = list(dict.fromkeys(q.reference for q in queries))
    positions = torch.tensor([index[r] for r in references])
    gallery = evaluator.gallery_features()
    scenes = json.loads((world_data / split.dataset / "scenes.json").read_text())["images"]
    captions = [describe_scene(Scene.from_dict(scenes[r]["scene"])) for r in references]
    from_image = self_retrieval(backbone, phi, evaluator.features().lookup(references), gallery, positions)
    from_caption = self_retrieval(backbone, phi, backbone.encode_text(captions), gallery, positions)
    return {"from_image_R@1": from_image, "from_caption_R@1": from_caption, "n": len(references)}


def reference_in_words(evaluator, world_data: Path, backbone) -> dict:
    """What a perfect pseudo token could give with this text tower, on the CIRR-format val: the reference
    described by its own canonical caption in the Phi prompt ("a photo of {reference caption} that
    {caption}") instead of `$`. A property of the world CLIP's text tower (does it compose a described
    picture with a change?), next to the image + text sum that every inversion method must beat.

    Returns:
        {"R@1", "R@10": of those queries, "n": queries}.
    """
    scenes = json.loads((world_data / evaluator.full_split.dataset / "scenes.json").read_text())["images"]
    prompts = [PROMPT_PREFIX.replace(PSEUDO_TOKEN, describe_scene(Scene.from_dict(scenes[q.reference]["scene"])))
               + " " + q.captions[0] for q in evaluator.split.queries]
    metrics = evaluator.evaluate(queries=F.normalize(backbone.encode_text(prompts), dim=-1)).metrics
    return {"R@1": round(metrics["R@1"], 2), "R@10": round(metrics["R@10"], 2), "n": len(prompts)}


def target_caption_queries(evaluator, world_data: Path, backbone) -> torch.Tensor:
    """Upper bound: each query's target described by its own canonical caption (text → image)."""
    bench = evaluator.full_split.dataset
    scenes = json.loads((world_data / bench / "scenes.json").read_text())["images"]
    captions = [describe_scene(Scene.from_dict(scenes[q.targets[0]]["scene"])) for q in evaluator.split.queries]
    return F.normalize(backbone.encode_text(captions), dim=-1)


def run_cig(world, backbone, phi, evaluators, cache, config: DemoConfig, budget) -> dict | None:
    """The CIG stage on the world's CIRR-format val (pseudo targets from the world's tiny generator).

    Returns:
        The stage report with `rows` = {"LinCIR + CIG": {"cirr": metrics}} and `per_query` (both evaluated here,
        as every row of a rerun is) and `examples` = {query id: pseudo-target path} for the grid; None when
        the stage is not in this build.
    """
    try:
        from zscir.demo.cig_stage import ROW, run_cig_stage
    except ImportError:
        _say("CIG stage not available in this build; skipped")
        return None
    base_dir, base = world_generator_base(Path(config.cache_dir), backbone, config.fast, config.train_generator,
                                          config.progress)
    _say(f"CIG: base generator ({base['source']}) → {base_dir}; fine-tuning its UNet on 'a photo of $', "
         "generating pseudo targets, fusing")
    cirr_val = evaluators["cirr"][0].full_split
    report = run_cig_stage(world, backbone, phi, [cirr_val], cache, world / "cig", base_dir, fast=config.fast,
                           progress=config.progress)
    report = {**report, "base_generator": base}
    pseudo_dir = report["pseudo_dir"][cirr_val.name]
    cirr_ev = evaluators["cirr"][0]
    fused = evaluate_fused(cirr_ev, pseudo_target_queries(cirr_ev, phi, pseudo_dir), float(report["alpha"]))
    rows, per_query = {ROW: {"cirr": fused.metrics}}, {ROW: {"cirr": compared_values([fused], "cirr")}}
    examples = {q.query_id: image_path(pseudo_dir, q.query_id) for q in cirr_val.queries}
    _say(f"CIG: α = {report['alpha']} chosen on {report.get('alpha_selected_on', '?')}")
    return {**report, "rows": rows, "per_query": per_query, "examples": examples}


def render_summary(results: dict, table: str) -> str:
    """The text printed at the end of the demo: world properties vs real data, the table, which orderings hold."""
    calibration = results.get("calibration", {})
    seeds = results.get("seeds")
    lines = ["", "zscir demo — synthetic world (all numbers computed by this run; percent)"
             + (f"; mean ± std over seeds {seeds}" if seeds else ""), "",
             "World properties the world is calibrated on, next to real data:"]
    clip = calibration.get("clip")
    if clip:
        lines.append(f"  world CLIP on {clip['n']:.0f} held-out pairs (chance R@1 {100 / clip['n']:.1f}):")
        for key in ("centroid_cosine", "gap_norm", "matched_cosine", "t2i_R@1", "i2t_R@1", "image_rms",
                    "noise_over_gap"):
            real = REAL_CLIP[key]
            lines.append(f"    {key:16} {clip[key]:8.3g}   real CLIP {real['value']:6g} ({real['kind']})")
        lines.append(f"    image cone |mean| {clip['image_cone']:.3f}, text cone |mean| {clip['text_cone']:.3f}, "
                     f"non-matching pair cosine {clip['random_cosine']:.3f}")
    for method, values in calibration.get("pseudo_token", {}).items():
        lines.append(f"  {method} 'a photo of $' retrieves its own reference (CIRR val, R@1): from the image "
                     f"{values['from_image_R@1']:.1f}, from the reference's caption {values['from_caption_R@1']:.1f}")
    words = calibration.get("reference_in_words")
    if words:
        best = max((results.get("rows", {}).get(k, {}).get("cirr", {}).get("R@1", 0.0)
                    for k in ("image only", "text only", "image + text (sum)")), default=0.0)
        lines.append(f"  reference described in words in the Phi prompt ('a photo of {{reference caption}} that "
                     f"{{caption}}'), CIRR R@1 {words['R@1']:.1f} vs the best baseline {best:.1f}: what a perfect "
                     "pseudo token could reach with this text tower")
    real_cirr = REAL_BASELINES["cirr"]
    for bench, values in calibration.get("layouts", {}).items():
        real = (f"   real CIRR: text/image {real_cirr['text only R@1'] / real_cirr['image only R@1']:.1f}"
                if bench == "cirr" else "")
        lines.append(f"  {bench:9} {values['metric']:6} image only {values['image_only']:5.1f}  text only "
                     f"{values['text_only']:5.1f}  upper bound {values['upper_bound']:5.1f}  text/upper "
                     f"{values['text_over_upper']:.2f}  text/image {values['text_over_image']:.1f}{real}")
    cig_runs = [run.get("cig") or {} for run in results.get("per_seed", {}).values()] if seeds else \
        [results.get("cig") or {}]
    for split_name in (cig_runs[0] if cig_runs else {}).get("pseudo_target_similarity", {}):
        sims = [run.get("pseudo_target_similarity", {}).get(split_name, {}) for run in cig_runs]
        sims = [sim for sim in sims if sim.get("n")]
        if not sims:
            continue
        mean = {k: sum(sim[k] for sim in sims) / len(sims) for k in ("to_target", "to_random", "to_reference",
                                                                      "closer_to_target")}
        over = f", mean of {len(sims)} seeds" if len(sims) > 1 else ""
        lines.append(f"  CIG pseudo targets ({split_name}{over}): CLIP cosine to the true target "
                     f"{mean['to_target']:.3f} vs to a random gallery image {mean['to_random']:.3f} (to the reference "
                     f"{mean['to_reference']:.3f}); closer to the target than to the random image for "
                     f"{mean['closer_to_target']:.1f}%")
    alphas = [run.get("alpha") for run in cig_runs]
    if any(a is not None for a in alphas):
        shown = " / ".join(str(a) for a in alphas) + (" (seeds " + " / ".join(map(str, seeds)) + ")" if seeds else "")
        lines.append(f"  CIG fusion weight α = {shown}, chosen on held-out train queries; 1.0 = the pseudo target is "
                     "not used, so LinCIR + CIG equals LinCIR there")
    lines += ["", "CIR: CIRR-format val (reference removed; Rs = subset recall), FashionIQ-format val (mean of 3 "
              "categories), CIRCO-format val", "", table]
    checks = results.get("acceptance", [])
    if checks:
        held = sum(c["holds"] for c in checks)
        lines += ["", f"Orderings of the published tables that hold on this run ({held} of {len(checks)}; the "
                  "difference is paired query by query, with its 95% interval; \"within noise\": the interval "
                  "contains 0):"]
        lines += ["  " + ("holds" if c["holds"] else "FAILS") + f"  {c['name']}  [{c['detail']}; "
                  f"{c['seeds_holding']}/{c['seeds']} seeds{_difference(c)}]" for c in checks]
    by_edit = results.get("cirr_R@1_by_edit_type")
    if by_edit and not seeds:
        lines += ["", "CIRR R@1 per edit type:"]
        kinds = list(next(iter(by_edit.values())))
        width = max(len(k) for k in by_edit) + 2
        lines.append("".ljust(width) + "".join(k.rjust(max(12, len(k) + 1)) for k in kinds))
        for label, values in by_edit.items():
            lines.append(label.ljust(width) + "".join(f"{values.get(k, float('nan')):.1f}".rjust(max(12, len(k) + 1))
                                                      for k in kinds))
    seconds = results["seconds"]
    lines += ["", "wall time (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items())]
    return "\n".join(lines)


def _difference(check: dict) -> str:
    """"; difference -1.7 (95% -3.0 to -0.4)" of an acceptance check: "within noise" when the interval holds 0,
    "identical" when the two rows give every query the same value."""
    if check.get("low") is None:
        return ""
    if check["low"] == check["high"] == 0.0:  # e.g. CIG at α = 1: the very same queries
        return "; identical query by query"
    noise = "; within noise" if within_noise(check["low"], check["high"]) else ""
    return f"; difference {check['difference']:+.1f} (95% {check['low']:+.1f} to {check['high']:+.1f}){noise}"
