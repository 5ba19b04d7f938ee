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

Long runs go through `zscir.oti.store.invert_to_store` (resumable, on disk).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zscir.compose import TEMPLATE_SETS, TEMPLATES, PromptTemplate
from zscir.errors import ZscirError
from zscir.oti.concepts import ConceptBank
from zscir.utils.hashing import derived_seed


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
