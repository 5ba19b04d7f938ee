"""CLIP backbones: text and vision towers with projection, tokenizer and image processor.

`Backbone.load` takes a registered name (`ViT-L/14`, `synthetic-clip`, ...), any hub id or a local
folder written by `save_pretrained`. All encoders are batched, run under `torch.inference_mode`
with explicit device and dtype, and return float32 tensors on the CPU (callers normalise).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from zscir.errors import ModelLoadError
from zscir.models.pseudo_tokens import (
    PseudoTokenOutput,
    encode_in_length_buckets,
    encode_with_pseudo_tokens,
    end_of_text_positions,
)
from zscir.models.tokenizer import pseudo_token_id
from zscir.registry import resolve_backbone
from zscir.utils.device import check_device
from zscir.utils.terminal import bars_only_on_a_terminal

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map "fp32" / "fp16" / "bf16" (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _hub_error(source: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {source!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
        "— if this is a hub id, the model hub is unreachable from here (offline or HF_HUB_OFFLINE=1); "
        "download it elsewhere and pass the local folder (save_pretrained format) instead"
    )


def library_bars_only_on_a_terminal():
    """transformers' own progress bars (e.g. "Writing model shards") only when stderr is a terminal, so that
    logs and CI output hold zscir's lines, not bar redraws."""
    from transformers.utils import logging as hf_logging

    return bars_only_on_a_terminal(hf_logging)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-load reports and weight-loading bars (loading one tower from a full CLIP
    folder lists every key of the other tower as "unexpected", which is expected here)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


TOKEN_CACHE_SIZE = 50_000  # texts whose ids a Backbone keeps (a few MB at CLIP's 77 tokens)


def fingerprint_module(module: torch.nn.Module) -> str:
    """A cheap content hash of a module's weights: the exact sum of each tensor's bit patterns, and a sample.

    Changes when the weights change (retraining, another checkpoint, a single edited weight), so feature
    caches keyed by it are invalidated. The checksum is an integer sum of the float32 bit patterns, which
    is exact and so independent of the summation order: the same weights give the same hash under any
    thread count (a float sum, printed to 7 digits, did not). Costs milliseconds to seconds even for ViT-G.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).cpu()
        flat = flat.float() if flat.is_floating_point() else flat.long()
        bits = flat.view(torch.int32).long() if flat.dtype == torch.float32 else flat
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(bits.sum().item()).encode())
        digest.update(flat[:: max(1, flat.numel() // 64)][:64].numpy().tobytes())
    return digest.hexdigest()[:16]


def target_pad(image: Image.Image, target_ratio: float = 1.25) -> Image.Image:
    """SEARLE's "target pad": pad with black to an aspect ratio of at most `target_ratio`.

    Args:
        image: an RGB PIL image.
        target_ratio: largest allowed max(w, h) / min(w, h) after padding.
    Returns:
        The padded image (the original centred), or the image itself if already within the ratio.
    """
    w, h = image.size
    if max(w, h) / min(w, h) <= target_ratio:
        return image
    side = int(max(w, h) / target_ratio)
    new_w, new_h = (w, max(h, side)) if w >= h else (max(w, side), h)
    canvas = Image.new("RGB", (new_w, new_h), (0, 0, 0))
    canvas.paste(image, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas


@dataclass
class Backbone:
    """A CLIP model split into its towers, with everything needed to encode.

    Attributes:
        name: what it was loaded from (registered name, hub id or folder).
        text: `CLIPTextModelWithProjection` (may be replaced by a fine-tuned tower).
        vision: `CLIPVisionModelWithProjection`.
        tokenizer: a CLIP tokenizer; `context_length` tokens per prompt.
        image_processor: `CLIPImageProcessorPil` (PIL path, no torchvision).
    """

    name: str
    text: torch.nn.Module
    vision: torch.nn.Module
    tokenizer: object
    image_processor: object
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    # ids of recently tokenized texts (OTI and training re-tokenize the same prompts at every step)
    _token_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        load_vision: bool = True,
        load_text: bool = True,
    ) -> Backbone:
        """Load a backbone by registered name, hub id or local folder.

        Args:
            name_or_path: e.g. "ViT-L/14", "openai/clip-vit-large-patch14", "./my-clip".
            device: where the towers run.
            dtype: "fp32" (CPU default), "fp16" or "bf16".
            load_vision / load_text: skip a tower that a job does not need.
        Raises:
            ModelLoadError: unknown name (lists known names), unreachable hub, missing folder.
            ZscirError: a device this machine does not have.
        """
        from transformers import (
            AutoTokenizer,
            CLIPImageProcessorPil,
            CLIPTextModelWithProjection,
            CLIPVisionModelWithProjection,
        )

        device = check_device(device)
        source, spec = resolve_backbone(name_or_path)
        if spec is not None and spec.source.startswith("{cache}") and not Path(source).exists():
            raise ModelLoadError(f"{name_or_path!r} has not been built yet (expected at {source}); run `zscir demo`")
        torch_dtype = resolve_dtype(dtype)
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(source)
                text = CLIPTextModelWithProjection.from_pretrained(source, dtype=torch_dtype) if load_text else None
                vision_cls = CLIPVisionModelWithProjection
                vision = vision_cls.from_pretrained(source, dtype=torch_dtype) if load_vision else None
                processor = CLIPImageProcessorPil.from_pretrained(source) if load_vision else None
        except (OSError, ValueError) as exc:
            raise _hub_error(source, exc) from exc
        for tower in (text, vision):
            if tower is not None:
                tower.to(device).eval().requires_grad_(False)
        backbone = cls(name_or_path, text, vision, tokenizer, processor, torch.device(device), torch_dtype)
        if spec is not None and spec.projection_dim is not None and backbone.projection_dim != spec.projection_dim:
            raise ModelLoadError(
                f"{name_or_path!r}: projection dim {backbone.projection_dim} != registered {spec.projection_dim}"
            )
        return backbone

    # ---- dimensions ---------------------------------------------------------------------------
    @property
    def projection_dim(self) -> int:
        """P: size of the image and text embeddings."""
        tower = self.text if self.text is not None else self.vision
        return int(tower.config.projection_dim)

    @property
    def hidden_size(self) -> int:
        """H: size of the text tower's token embeddings (what Phi outputs)."""
        return int(self.text.config.hidden_size)

    @property
    def context_length(self) -> int:
        """Tokens per prompt (77 for real CLIP)."""
        return int(self.text.config.max_position_embeddings)

    @property
    def pseudo_token_id(self) -> int:
        """The tokenizer's id of the pseudo word `$`."""
        return pseudo_token_id(self.tokenizer)

    def vision_fingerprint(self) -> str:
        """Content hash of the image tower and its preprocessing (for feature caches)."""
        proc = self.image_processor.to_json_string() if self.image_processor is not None else ""
        return hashlib.sha256((fingerprint_module(self.vision) + proc + str(self.dtype)).encode()).hexdigest()[:16]

    def text_fingerprint(self) -> str:
        """Content hash of the text tower and tokenizer."""
        return hashlib.sha256((fingerprint_module(self.text) + str(len(self.tokenizer))).encode()).hexdigest()[:16]

    # ---- text ---------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, context_length] ids, padded and truncated like CLIP (end token kept on truncation).

        Each distinct text is tokenized once and remembered (up to TOKEN_CACHE_SIZE texts): every row is
        padded to the full context, so a row never depends on the other texts of the call.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        cache = self._token_cache
        rows = {t: cache[t] for t in dict.fromkeys(texts) if t in cache}
        missing = [t for t in dict.fromkeys(texts) if t not in rows]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")["input_ids"]
            rows.update(zip(missing, ids))  # this call's rows, kept even if the cache is cleared below
            if len(cache) + len(missing) > TOKEN_CACHE_SIZE:
                cache.clear()
            cache.update(zip(missing, ids))
        return torch.stack([rows[t] for t in texts])

    def encode_composed(
        self,
        texts: Sequence[str],
        pseudo_tokens: torch.Tensor | None = None,
        return_penultimate: bool = False,
        text_tower: torch.nn.Module | None = None,
        pad_id: int | None = None,
    ) -> PseudoTokenOutput:
        """Encode prompts containing `$` with one pseudo-token vector per prompt (differentiable).

        Args:
            texts: N prompts (each `$` is replaced by that row's pseudo token).
            pseudo_tokens: [N, H] or None for plain text.
            return_penultimate: also return [N, L, H] penultimate hidden states.
            text_tower: another tower with the same tokenizer (e.g. RTD's trainable copy).
            pad_id: id written after each row's end-of-text token (OpenAI's `clip.tokenize` pads with 0, HF's
                ViT-L tokenizer with the end id); None = the tokenizer's own padding. The tower is causal, so
                only the hidden states after the end token change, never the pooled output.
        """
        tower = text_tower if text_tower is not None else self.text
        ids = self.tokenize(texts).to(self.device)
        if pad_id is not None:
            end = end_of_text_positions(tower.text_model, ids)
            ids = ids.masked_fill(torch.arange(ids.shape[1], device=ids.device) > end.unsqueeze(1), pad_id)
        tokens = None if pseudo_tokens is None else pseudo_tokens.to(self.device, self.dtype)
        if not return_penultimate:
            # The tower is causal: columns after a row's end-of-text token never reach its pooled output, so
            # rows are encoded in length buckets, each cut after its longest row (tested against the full context).
            return encode_in_length_buckets(tower, ids, tokens, self.pseudo_token_id)
        return encode_with_pseudo_tokens(tower, ids, tokens, self.pseudo_token_id, return_penultimate)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, pseudo_tokens: torch.Tensor | None = None,
                    progress: bool = False) -> torch.Tensor:
        """Batched, no-grad text embeddings [N, P] (float32, CPU, not normalised)."""
        from tqdm.auto import tqdm

        texts = list(texts)
        chunks = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc="encode text", disable=not progress or None):
                rows = slice(start, start + batch_size)
                tokens = None if pseudo_tokens is None else pseudo_tokens[rows]
                chunks.append(self.encode_composed(texts[rows], tokens).text_embeds.float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.projection_dim)

    # ---- images -------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image], pad_to_ratio: float | None = None) -> torch.Tensor:
        """PIL images → pixel values [N, 3, S, S] with CLIP's resize / crop / normalise.

        Args:
            pad_to_ratio: apply SEARLE's target pad with this ratio first (1.25 in SEARLE); None = plain CLIP.
        """
        images = [im.convert("RGB") for im in images]
        if pad_to_ratio is not None:
            images = [target_pad(im, pad_to_ratio) for im in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings [N, P] from preprocessed pixels (no grad, float32, CPU)."""
        with torch.inference_mode():
            out = self.vision(pixel_values=pixel_values.to(self.device, self.dtype))
        return out.image_embeds.float().cpu()

    def encode_image(self, images: Sequence[Image.Image], batch_size: int = 64, pad_to_ratio: float | None = None,
                     progress: bool = False) -> torch.Tensor:
        """Batched image embeddings [N, P] (float32, CPU, not normalised)."""
        from tqdm.auto import tqdm

        images = list(images)
        chunks = []
        for start in tqdm(range(0, len(images), batch_size), desc="encode images", disable=not progress or None):
            chunks.append(self.encode_pixels(self.preprocess(images[start : start + batch_size], pad_to_ratio)))
        return torch.cat(chunks) if chunks else torch.empty(0, self.projection_dim)

    def round_weights(self, dtype: str | torch.dtype = "fp16") -> Backbone:
        """Round every floating weight and buffer of both towers to `dtype` and back, in place (the computation
        stays in `self.dtype`). The official LinCIR / SEARLE evaluations do this implicitly: they load the
        towers in fp16 (`from_pretrained(torch_dtype=float16)`, OpenAI `clip.load` on CUDA) and call `.float()`.

        Returns:
            self.
        """
        target = resolve_dtype(dtype)
        with torch.no_grad():
            for tower in (self.text, self.vision):
                if tower is None:
                    continue
                for tensor in [*tower.parameters(), *tower.buffers()]:
                    if tensor.is_floating_point():
                        tensor.copy_(tensor.to(target).to(tensor.dtype))
        return self

    def with_text_tower(self, text_tower: torch.nn.Module) -> Backbone:
        """A copy of this backbone whose text tower is replaced (e.g. an RTD fine-tuned one).

        The tower is used as it is: its training mode and `requires_grad` flags are left alone, so a tower
        being trained can be evaluated mid-training (query composition runs under `inference_mode`).
        """
        config = text_tower.config
        if config.hidden_size != self.hidden_size or config.projection_dim != self.projection_dim:
            raise ModelLoadError(
                f"text tower dims (hidden {text_tower.config.hidden_size}, projection "
                f"{text_tower.config.projection_dim}) do not match the backbone (hidden {self.hidden_size}, "
                f"projection {self.projection_dim})"
            )
        text_tower = text_tower.to(self.device, self.dtype)
        return Backbone(self.name, text_tower, self.vision, self.tokenizer, self.image_processor, self.device,
                        self.dtype)
