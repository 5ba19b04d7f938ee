"""SEARLE's optimisation-based textual inversion (OTI, METHODS.md §3): one pseudo token per image.

For each image (embedding x) one token v ∈ R^H is optimised, the towers frozen:

    loss(v) = w_img · (1 − cos(encode(template, v), x))
            + w_phr · (1 − cos(encode(phrase with the concept replaced by $, v), encode(phrase)))

where, at every step, the template is drawn from PALAVRA's 24 templates ("This is a photo of a $",
..., `compose.TEMPLATE_SETS["palavra"]`, as the official OTI does; a fixed prompt such as "a photo of
$" is an option) and the phrase from the phrases of one of the image's top-k concepts (`ConceptBank`).
SEARLE normalises the loss by (w_img + w_phr); AdamW is invariant to that constant factor (up to its ε).
AdamW (lr 2e-2, weight decay 0.01) for 350 steps; the output is the exponential moving average of v
(decay 0.99, started at the initial v), not the last iterate.

Batching: many images are optimised together as one [B, H] parameter with one optimiser. The loss is
the SUM of the per-image losses and AdamW acts element-wise, so each row follows exactly the
trajectory it would follow alone; every random draw of a row (initial v, concept and phrase choices)
comes from a stream seeded by (seed, image name), never from its position in the batch.

Long runs go through `invert_to_store`: tokens are written in chunks (atomically) into a folder keyed
by the settings, and a rerun skips the images already done. `oti_pseudo_tokens` turns that into a
retrieval method ("SEARLE-OTI"): pseudo tokens for the reference images of a split, ready for
`compose_queries`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.compose import TEMPLATE_SETS, TEMPLATES, PromptTemplate
from zscir.errors import DataError, ZscirError
from zscir.training.concepts import ConceptBank
from zscir.utils.hashing import derived_seed, hash_parts

STORE_VERSION = 1
META_NAME = "meta.json"


@dataclass
class OTIConfig:
    """OTI recipe (defaults: the SEARLE paper).

    Attributes:
        steps: optimisation steps per image.
        lr / weight_decay: AdamW.
        ema_decay: the output is ema ← d·ema + (1−d)·v after every step, ema₀ = v₀.
        image_weight: weight of the image cosine loss.
        phrase_weight: weight of the concept-phrase loss (0 = no phrases needed).
        top_k: concepts per image the phrase is drawn from.
        template: a template-set name (`compose.TEMPLATE_SETS`, default "palavra": one template drawn per
            image and step, the official OTI) or one fixed prompt with `$` (e.g. "a photo of $").
        init_std: std of the normal initial v; None = std of the text tower's token-embedding table.
        seed: base seed of every per-image random stream.
        batch_size: images optimised together (does not change the result, only the speed).
    """

    steps: int = 350
    lr: float = 2e-2
    weight_decay: float = 0.01
    ema_decay: float = 0.99
    image_weight: float = 1.0
    phrase_weight: float = 0.5
    top_k: int = 15
    template: str = "palavra"  # SEARLE src/oti_inversion.py: random.choices(get_templates()) every step
    init_std: float | None = None
    seed: int = 0
    batch_size: int = 32

    def check(self) -> None:
        """Raise ZscirError naming the first invalid field."""
        if self.steps < 1 or self.batch_size < 1 or self.top_k < 1:
            raise ZscirError("OTI: steps, batch_size and top_k must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ZscirError(f"OTI: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.image_weight < 0 or self.phrase_weight < 0:
            raise ZscirError("OTI: loss weights must be >= 0")
        if self.template not in TEMPLATE_SETS:
            PromptTemplate(self.template)

    def result_key(self) -> dict:
        """The fields that determine the tokens (everything but batch_size)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}


@dataclass
class OTIResult:
    """What `invert_images` returns.

    Attributes:
        tokens: [N, H] EMA tokens (the output of OTI).
        last: [N, H] raw tokens after the last step.
        first_loss / last_loss: [N] per-image loss at the first and the last step (phrase term sampled).
    """

    tokens: torch.Tensor
    last: torch.Tensor
    first_loss: torch.Tensor
    last_loss: torch.Tensor


def token_embedding_std(backbone) -> float:
    """Std of the text tower's token-embedding table (the scale of a real word's embedding)."""
    return float(backbone.text.get_input_embeddings().weight.detach().float().std())


def initial_tokens(names: Sequence[str], hidden_size: int, std: float, seed: int) -> torch.Tensor:
    """v₀ ~ N(0, std²) per image, from a generator seeded by (seed, name).

    Returns:
        [N, H] float32.
    """
    rows = [torch.randn(hidden_size, generator=torch.Generator().manual_seed(derived_seed(seed, f"oti-init|{n}")))
            for n in names]
    return (torch.stack(rows) * std) if rows else torch.empty(0, hidden_size)


def image_loss(backbone, image_embeds: torch.Tensor, tokens: torch.Tensor, template: str = TEMPLATES["plain"],
               ) -> torch.Tensor:
    """1 − cos(encode(template, v_i), x_i) per image (differentiable w.r.t. tokens).

    Args:
        backbone: a `Backbone`.
        image_embeds: [N, P] image embeddings.
        tokens: [N, H] pseudo tokens.
        template: prompt with `$`.
    Returns:
        [N] float32 losses.
    """
    text = backbone.encode_composed([template] * tokens.shape[0], tokens).text_embeds.float()
    return 1.0 - F.cosine_similarity(text, image_embeds.to(text.device).float(), dim=-1)


def _invert_batch(backbone, embeds: torch.Tensor, names: Sequence[str], bank: ConceptBank | None,
                  config: OTIConfig, std: float, on_step: Callable[[int, torch.Tensor], None] | None):
    """OTI for one batch; returns (ema, last, first_loss, last_loss), all on the CPU."""
    n = len(names)
    device = backbone.device
    targets = F.normalize(embeds.float(), dim=-1).to(device)
    use_phrases = config.phrase_weight > 0
    if use_phrases:
        if bank is None:
            raise ZscirError("OTI: phrase_weight > 0 needs a ConceptBank (or set phrase_weight=0)")
        candidates = bank.top_k(embeds, config.top_k)
        rngs = [random.Random(derived_seed(config.seed, f"oti-phrase|{name}")) for name in names]
    start = initial_tokens(names, backbone.hidden_size, std, config.seed).to(device)
    token = torch.nn.Parameter(start.clone())
    ema = start.clone()
    optimizer = torch.optim.AdamW([token], lr=config.lr, weight_decay=config.weight_decay)
    drawn = TEMPLATE_SETS.get(config.template)
    if drawn is not None:  # each image draws its template from its own stream (batching changes nothing)
        template_rngs = [random.Random(derived_seed(config.seed, f"oti-template|{name}")) for name in names]
    first_loss = last_loss = None
    for step in range(config.steps):
        if drawn is None:
            prompts = [config.template] * n
        else:
            prompts = [drawn[r.randrange(len(drawn))] for r in template_rngs]
        if use_phrases:
            masked, phrase_targets = bank.sample(candidates, rngs)
            # two passes, each cut to its own length (the short template is not padded to the phrases)
            composed = backbone.encode_composed(prompts, token).text_embeds.float()
            img_cos = F.cosine_similarity(composed, targets, dim=-1)
            phr_out = backbone.encode_composed(masked, token).text_embeds.float()
            phr_cos = F.cosine_similarity(phr_out, phrase_targets.to(device).float(), dim=-1)
            rows = config.image_weight * (1 - img_cos) + config.phrase_weight * (1 - phr_cos)
        else:
            out = backbone.encode_composed(prompts, token).text_embeds.float()
            rows = config.image_weight * (1 - F.cosine_similarity(out, targets, dim=-1))
        if not bool(torch.isfinite(rows).all()):
            bad = [names[i] for i in (~torch.isfinite(rows)).nonzero().flatten().tolist()[:3]]
            raise ZscirError(f"OTI: non-finite loss at step {step} for image(s) {bad}")
        optimizer.zero_grad(set_to_none=True)
        rows.sum().backward()  # sum, not mean: each row's gradient is independent of the batch size
        optimizer.step()
        with torch.no_grad():
            ema.mul_(config.ema_decay).add_(token.detach(), alpha=1.0 - config.ema_decay)
        if on_step is not None:
            on_step(step, token.detach().cpu().clone())
        if first_loss is None:
            first_loss = rows.detach().cpu()
        last_loss = rows.detach().cpu()
    return ema.cpu(), token.detach().cpu(), first_loss, last_loss


def invert_images(backbone, images, bank: ConceptBank | None, config: OTIConfig | None = None,
                  names: Sequence[str] | None = None, progress: bool = True,
                  on_step: Callable[[int, torch.Tensor], None] | None = None, _bar=None) -> OTIResult:
    """OTI pseudo tokens for a set of images (in memory; see `invert_to_store` for resumable runs).

    Args:
        backbone: a `Backbone` (frozen; only the tokens are optimised).
        images: [N, P] image embeddings, or a list of PIL images (encoded here).
        bank: concepts and phrases (None allowed when `config.phrase_weight == 0`).
        config: OTIConfig (default: the paper's recipe).
        names: N unique image names that seed each image's random streams (default "0", "1", ...).
            Pass the same names to get the same tokens whatever the batching.
        progress: show a tqdm bar over images.
        on_step: called as on_step(step, raw_tokens [B, H]) after every optimiser step of each batch.
    Returns:
        OTIResult (`tokens` = the EMA tokens).
    """
    from tqdm.auto import tqdm

    config = config or OTIConfig()
    config.check()
    embeds = images if isinstance(images, torch.Tensor) else backbone.encode_image(list(images))
    names = [str(i) for i in range(embeds.shape[0])] if names is None else list(names)
    if len(names) != embeds.shape[0]:
        raise ValueError(f"{len(names)} names for {embeds.shape[0]} images")
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique (they seed each image's random streams)")
    std = config.init_std if config.init_std is not None else token_embedding_std(backbone)
    bar = _bar if _bar is not None else tqdm(total=len(names), desc="OTI", unit="img",
                                              disable=not progress or None)
    parts = []
    try:
        for s in range(0, len(names), config.batch_size):
            rows = slice(s, s + config.batch_size)
            parts.append(_invert_batch(backbone, embeds[rows], names[rows], bank, config, std, on_step))
            bar.update(len(names[rows]))
    finally:
        if _bar is None:
            bar.close()
    if not parts:
        h = backbone.hidden_size
        return OTIResult(torch.empty(0, h), torch.empty(0, h), torch.empty(0), torch.empty(0))
    return OTIResult(*(torch.cat(p) for p in zip(*parts)))


# ---------------------------------------------------------------------------------------------
# Resumable token store


class TokenStore:
    """A folder of OTI tokens: `meta.json` (what produced them) + `tokens-NNNNN.safetensors` chunks.

    Each chunk holds `tokens` [n, H] and the `image_embeds` [n, P] they were inverted from (so Phi
    distillation reads its training pairs from the store alone), with the image names in the file's
    metadata; chunks are written atomically, so an interrupted run loses at most the chunk in progress.

    Args:
        folder: the store folder (created).
        meta: the settings the tokens depend on; refused (ZscirError) if the folder holds tokens made
            with different settings. None opens an existing store read-only.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict | None = None):
        from zscir.utils.io import read_json, write_json_atomic

        self.folder = Path(folder)
        meta_path = self.folder / META_NAME
        if meta is None:
            if not meta_path.is_file():
                raise DataError(f"{self.folder}: not an OTI token folder (no {META_NAME})")
            self.meta = read_json(meta_path)
            return
        meta = json.loads(json.dumps({"version": STORE_VERSION, **meta}))  # normalise tuples etc.
        if meta_path.is_file():
            found = read_json(meta_path)
            if found != meta:
                diff = _differences(found, meta)
                raise ZscirError(f"{self.folder} holds OTI tokens made with other settings (differs in {diff}); "
                                 "use another output folder or delete it")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta_path, meta)
        self.meta = meta

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("tokens-*.safetensors"))

    def index(self) -> dict[str, tuple[Path, int]]:
        """{image name: (chunk file, row)} of every stored token."""
        from safetensors import safe_open

        found = {}
        for path in self._chunks():
            with safe_open(str(path), "pt") as f:
                for row, name in enumerate(json.loads(f.metadata()["names"])):
                    found[name] = (path, row)
        return found

    def append(self, names: Sequence[str], tokens: torch.Tensor, image_embeds: torch.Tensor) -> Path:
        """Write one chunk (tokens [n, H], image embeddings [n, P]) atomically; returns its path."""
        from safetensors.torch import save_file

        from zscir.utils.io import atomic_path

        chunks = self._chunks()
        number = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
        path = self.folder / f"tokens-{number:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"tokens": tokens.detach().float().cpu().contiguous(),
                       "image_embeds": image_embeds.detach().float().cpu().contiguous()}, str(tmp),
                      metadata={"names": json.dumps(list(names))})
        return path

    def lookup(self, names: Sequence[str]) -> torch.Tensor:
        """[len(names), H] stored tokens (DataError names the first missing image)."""
        from safetensors.torch import load_file

        index = self.index()
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(f"{self.folder}: no OTI token for {len(missing)} image(s), e.g. {missing[:3]}")
        loaded: dict[Path, torch.Tensor] = {}
        rows = []
        for name in names:
            path, row = index[name]
            if path not in loaded:
                loaded[path] = load_file(str(path))["tokens"]
            rows.append(loaded[path][row])
        return torch.stack(rows) if rows else torch.empty(0, int(self.meta.get("hidden_size", 0)))

    def pairs(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Everything stored: (names, image_embeds [N, P], tokens [N, H]) in chunk order (Phi distillation's data)."""
        from safetensors import safe_open

        names, embeds, tokens = [], [], []
        for path in self._chunks():
            with safe_open(str(path), "pt") as f:
                names += json.loads(f.metadata()["names"])
                embeds.append(f.get_tensor("image_embeds"))
                tokens.append(f.get_tensor("tokens"))
        if not names:
            raise DataError(f"{self.folder}: the OTI token folder is empty; run `zscir invert` first")
        return names, torch.cat(embeds), torch.cat(tokens)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} → {y!r}")
    return out


def store_meta(backbone, bank: ConceptBank | None, config: OTIConfig, features_key: str | None = None) -> dict:
    """The settings OTI tokens depend on (the `TokenStore` guard)."""
    return {"oti": config.result_key(), "text_fingerprint": backbone.text_fingerprint(),
            "hidden_size": backbone.hidden_size,
            "concepts": None if (bank is None or config.phrase_weight == 0) else bank.fingerprint,
            "features": features_key}


def invert_to_store(backbone, names: Sequence[str], image_embeds: torch.Tensor, bank: ConceptBank | None,
                    config: OTIConfig, folder: str | os.PathLike, chunk_size: int = 256, progress: bool = True,
                    features_key: str | None = None) -> TokenStore:
    """Resumable OTI over an image list: images already in `folder` are skipped, the rest inverted in chunks.

    Args:
        backbone / bank / config: as in `invert_images`.
        names: N unique image names.
        image_embeds: [N, P] their embeddings.
        folder: the TokenStore folder.
        chunk_size: images per chunk file (the unit of resumption).
        features_key: identifies the image features (e.g. the feature-cache key); stored in the meta.
    Returns:
        The TokenStore holding a token for every name.
    """
    from tqdm.auto import tqdm

    config.check()
    store = TokenStore(folder, store_meta(backbone, bank, config, features_key))
    done = store.index()
    todo = [i for i, n in enumerate(names) if n not in done]
    with tqdm(total=len(names), initial=len(names) - len(todo), desc="OTI", unit="img",
              disable=not progress or None) as bar:
        for s in range(0, len(todo), chunk_size):
            rows = todo[s : s + chunk_size]
            chunk_names = [names[i] for i in rows]
            result = invert_images(backbone, image_embeds[rows], bank, config, chunk_names, _bar=bar)
            store.append(chunk_names, result.tokens, image_embeds[rows])
    return store


def features_key(backbone, pad_to_ratio: float | None) -> str:
    """What the image embeddings of a store depend on besides the image itself: vision weights + preprocessing."""
    return hash_parts(backbone.vision_fingerprint(), {"pad_to_ratio": pad_to_ratio})


def default_oti_dir(backbone, bank: ConceptBank | None, config: OTIConfig, pad_to_ratio: float | None = None) -> Path:
    """`{cache}/oti/{hash of the settings}`: where the SEARLE-OTI helpers keep tokens by default."""
    from zscir.registry import default_cache_dir
    meta = store_meta(backbone, bank, config, features_key(backbone, pad_to_ratio))
    return default_cache_dir() / "oti" / hash_parts(meta)


def oti_tokens_for(backbone, names: Sequence[str], features, bank: ConceptBank | None,
                   config: OTIConfig | None = None, folder: str | os.PathLike | None = None,
                   pad_to_ratio: float | None = None, chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Pseudo tokens of named images whose embeddings are already computed; each image is inverted once.

    Args:
        backbone: a `Backbone`.
        names: images to return tokens for (repeats allowed).
        features: an `ImageFeatures` holding them (e.g. `Evaluator.features()`); failed images are refused.
        bank / config: as in `invert_images`.
        folder: TokenStore folder; default `default_oti_dir(...)` (under the zscir cache), shared by every
            image list with the same backbone, preprocessing and settings (tokens are keyed by image name).
        pad_to_ratio: the preprocessing the features were computed with (part of the store's key).
    Returns:
        [len(names), H] float32 EMA tokens in the order of `names`.
    Raises:
        DataError: a name without features, or whose image failed to encode.
    """
    config = config or OTIConfig()
    unique = list(dict.fromkeys(names))
    failed = [n for n in unique if n in features.failed]
    if failed:
        raise DataError(f"{len(failed)} image(s) to invert could not be encoded, e.g. {failed[0]}: "
                        f"{features.failed[failed[0]]}")
    embeds = features.lookup(unique)
    key = features_key(backbone, pad_to_ratio)
    folder = folder if folder is not None else default_oti_dir(backbone, bank, config, pad_to_ratio)
    store = invert_to_store(backbone, unique, embeds, bank, config, folder, chunk_size, progress, key)
    return store.lookup(list(names))


def oti_pseudo_tokens(backbone, images: Mapping[str, os.PathLike], names: Sequence[str],
                      bank: ConceptBank | None, config: OTIConfig | None = None,
                      folder: str | os.PathLike | None = None, cache=None, pad_to_ratio: float | None = None,
                      chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """SEARLE-OTI as a retrieval method: pseudo tokens for named images, inverted once and kept on disk.

    Typical use: `oti_pseudo_tokens(backbone, split.images, [q.reference for q in split.queries], bank)`,
    then `compose_queries(backbone, tokens, [q.captions for q in split.queries])`.

    Args:
        backbone: a `Backbone` with both towers.
        images: {name: path} holding at least `names` (e.g. `CIRSplit.images`).
        names: images to return tokens for (repeats allowed; each is inverted once).
        bank: concepts and phrases (see `ConceptBank.build`).
        config: OTIConfig.
        folder: TokenStore folder (default: see `oti_tokens_for`).
        cache: a `FeatureCache` for the image embeddings (default: the standard one).
        pad_to_ratio: SEARLE target pad (e.g. 1.25) or None.
    Returns:
        [len(names), H] float32 EMA tokens, in the order of `names`.
    Raises:
        DataError: an image missing from `images` or that does not load.
    """
    from zscir.retrieval.features import FeatureCache

    unique = list(dict.fromkeys(names))
    missing = [n for n in unique if n not in images]
    if missing:
        raise DataError(f"{len(missing)} image(s) to invert are not in the image table, e.g. {missing[:3]}")
    cache = cache if cache is not None else FeatureCache(progress=progress)
    feats = cache.image_features(backbone, {n: images[n] for n in unique}, pad_to_ratio, desc="OTI image features")
    return oti_tokens_for(backbone, names, feats, bank, config, folder, pad_to_ratio, chunk_size, progress)


def oti_reference_tokens(evaluator, bank: ConceptBank | None, config: OTIConfig | None = None,
                         folder: str | os.PathLike | None = None, progress: bool = True) -> torch.Tensor:
    """SEARLE-OTI tokens of an `Evaluator`'s active queries' reference images (its cached features reused).

    Use: `ev.evaluate("phi", pseudo_tokens=oti_reference_tokens(ev, bank))`.

    Returns:
        [Q, H] float32 EMA tokens, rows = `evaluator.split.queries`.
    """
    refs = [q.reference for q in evaluator.split.queries]
    return oti_tokens_for(evaluator.backbone, refs, evaluator.features(), bank, config, folder,
                          evaluator.pad_to_ratio, progress=progress)
