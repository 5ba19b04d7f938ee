"""Composed SDXL conditioning from two text towers and their Phis (METHODS.md §5).

For a query (reference image, relative caption) and two CLIP backbones with their inversion
networks (ViT-L/14 + bigG/14 for real SDXL; any two towers whose hidden sizes add up to the UNet's
cross-attention size; the same tower may be used twice):

    v_k = Phi_k(image_embeds_k(reference))                         k = 1, 2
    h_k = penultimate hidden states of tower k on "a photo of $ that {caption}" with $ = v_k
    prompt_embeds        = concat(h_1, h_2)  along the feature axis   [L, H1 + H2]   (tower 1 first)
    pooled_prompt_embeds = tower 2's projected end-of-text vector     [P2]

This mirrors what `StableDiffusionXLPipeline.encode_prompt` does with plain text (penultimate
states of both encoders, pooled output of encoder 2), with the pseudo token injected.
Conditionings are saved per query id as safetensors (atomic) or computed on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import torch

from zscir.compose import PromptTemplate, caption_variants
from zscir.errors import DataError, ModelLoadError
from zscir.models.backbone import Backbone
from zscir.models.phi import check_fits, load_inversion_network
from zscir.utils.io import atomic_path

PROMPT_KEY, POOLED_KEY = "prompt_embeds", "pooled_prompt_embeds"


def query_stem(query_id: str) -> str:
    """A file-name stem for a query id that cannot collide with another id's stem.

    Percent-encoding of everything outside [A-Za-z0-9_.-~] is injective, so FashionIQ's
    "dress/12" → "dress%2F12" never meets another id, and "%" itself is escaped.

    Args:
        query_id: `Query.query_id` (CIRR pairid, CIRCO id, FashionIQ "{category}/{index}").
    Returns:
        The stem (no extension).
    """
    stem = quote(str(query_id), safe="")
    if stem in ("", ".", ".."):
        raise DataError(f"query id {query_id!r} cannot be used as a file name")
    return stem


def check_cross_attention(hidden_1: int, hidden_2: int, cross_attention_dim: int) -> None:
    """Refuse towers whose hidden sizes do not add up to the UNet's cross-attention size.

    Raises:
        ModelLoadError: one line naming the three sizes.
    """
    if hidden_1 + hidden_2 != cross_attention_dim:
        raise ModelLoadError(
            f"generator UNet cross-attention size {cross_attention_dim} != text hidden sizes "
            f"{hidden_1} (tower 1) + {hidden_2} (tower 2) = {hidden_1 + hidden_2}; use the text towers "
            "the generator was trained with (ViT-L/14 + bigG/14 for SDXL)"
        )


@dataclass
class Conditioning:
    """SDXL conditioning of N queries.

    Attributes:
        prompt_embeds: [N, L, H1 + H2] float32 (tower 1's states in the first H1 features).
        pooled_prompt_embeds: [N, P2] float32.
    """

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor

    def __len__(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def __getitem__(self, rows) -> Conditioning:
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        return Conditioning(self.prompt_embeds[rows], self.pooled_prompt_embeds[rows])

    @classmethod
    def cat(cls, items: Sequence[Conditioning]) -> Conditioning:
        """Stack several conditionings along the batch axis."""
        return cls(torch.cat([c.prompt_embeds for c in items]), torch.cat([c.pooled_prompt_embeds for c in items]))


# The id the official CIG extraction writes after the end-of-text token (OpenAI `clip.tokenize` pads with 0).
OFFICIAL_PAD_ID = 0

@dataclass
class ComposedConditioner:
    """Two (backbone, Phi) pairs that turn reference images + captions into SDXL conditioning.

    Attributes:
        backbone_1, phi_1: tower 1 (ViT-L/14 for SDXL) and its inversion network.
        backbone_2, phi_2: tower 2 (bigG/14 for SDXL); its projection gives the pooled vector.
            May be the very same objects as tower 1 (the synthetic world).
        template: the prompt; "a photo of $ that {caption}" by default.
        pad_id: id after each prompt's end-of-text token in both towers' states: `OFFICIAL_PAD_ID` (0) by
            default, as the official CIG extraction pads (lan-lw/ComposedImageGen extract_lincir_feat.py
            tokenizes both prompts with OpenAI's `clip.tokenize`, which pads with 0; HF's ViT-L tokenizer pads
            with the end id instead; SDXL's bigG tokenizer already pads with id 0 "!"). None = each
            tokenizer's own padding (zscir before; `--tokenizer-padding`).
    """

    backbone_1: object
    phi_1: torch.nn.Module
    backbone_2: object
    phi_2: torch.nn.Module
    template: PromptTemplate = PromptTemplate()
    pad_id: int | None = OFFICIAL_PAD_ID

    def __post_init__(self):
        if self.backbone_1.context_length != self.backbone_2.context_length:
            raise ModelLoadError(
                f"the two text towers have different context lengths ({self.backbone_1.context_length} vs "
                f"{self.backbone_2.context_length}); SDXL concatenates their states token by token"
            )

    @property
    def cross_attention_dim(self) -> int:
        """H1 + H2: the UNet cross-attention size this conditioner feeds."""
        return self.backbone_1.hidden_size + self.backbone_2.hidden_size

    @property
    def pooled_dim(self) -> int:
        """P2: size of the pooled vector."""
        return self.backbone_2.projection_dim

    def check_unet(self, unet_config) -> None:
        """Raise ModelLoadError if `unet_config.cross_attention_dim` != H1 + H2 (naming the three sizes)."""
        cross = unet_config.cross_attention_dim
        cross = cross[0] if isinstance(cross, (list, tuple)) else cross
        check_cross_attention(self.backbone_1.hidden_size, self.backbone_2.hidden_size, int(cross))

    def _shared(self) -> bool:
        return self.backbone_1 is self.backbone_2 and self.phi_1 is self.phi_2

    def pseudo_tokens(self, images: Sequence, image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """v_1, v_2 = Phi_k(image_embeds_k(images)): [N, H1] and [N, H2].

        Args:
            images: N PIL images (ignored if `image_embeds` is given).
            image_embeds: precomputed ([N, P1], [N, P2]) image embeddings (e.g. from a feature cache).
        """
        if image_embeds is None:
            e1 = self.backbone_1.encode_image(images)
            e2 = e1 if self.backbone_2 is self.backbone_1 else self.backbone_2.encode_image(images)
        else:
            e1, e2 = image_embeds
        with torch.inference_mode():
            v1 = self.phi_1(e1.to(self.backbone_1.device, self.backbone_1.dtype)).float()
            v2 = v1 if self._shared() and e2 is e1 else self.phi_2(e2.to(self.backbone_2.device,
                                                                           self.backbone_2.dtype)).float()
        return v1, v2

    def encode(self, prompts: Sequence[str], v1: torch.Tensor | None, v2: torch.Tensor | None,
               grad: bool = False) -> Conditioning:
        """Conditioning of N prompts with one pseudo token per prompt and tower.

        Args:
            prompts: N prompts containing `$` (or none, with v1 = v2 = None).
            v1: [N, H1] pseudo tokens for tower 1; v2: [N, H2] for tower 2.
            grad: keep the autograd graph (training a Phi through the generator); default no grad.
        Returns:
            Conditioning with prompt_embeds [N, L, H1+H2] and pooled [N, P2] (float32, CPU unless grad).
        """
        context = torch.enable_grad() if grad else torch.inference_mode()
        with context:
            out1 = self.backbone_1.encode_composed(prompts, v1, return_penultimate=True, pad_id=self.pad_id)
            out2 = self.backbone_2.encode_composed(prompts, v2, return_penultimate=True, pad_id=self.pad_id)
            states = torch.cat([out1.penultimate_hidden_states.float(), out2.penultimate_hidden_states.float()], -1)
            pooled = out2.text_embeds.float()
        if not grad:
            states, pooled = states.cpu(), pooled.cpu()
        return Conditioning(states, pooled)

    def prompts_for(self, captions: Sequence[Sequence[str]]) -> list[str]:
        """The prompt of each query: template(caption); FashionIQ's two captions joined "c1 and c2"."""
        return [self.template.format(caption_variants(caps)[0]) for caps in captions]

    def for_queries(self, images: Sequence, captions: Sequence[Sequence[str]],
                    image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Conditioning:
        """Conditioning of N queries from their reference images and relative captions.

        Args:
            images: N reference PIL images.
            captions: N tuples of 1 or 2 relative captions.
            image_embeds: optional precomputed image embeddings of both towers.
        Returns:
            Conditioning of N rows.
        """
        if len(captions) != (len(images) if image_embeds is None else image_embeds[0].shape[0]):
            raise ValueError("one caption tuple per reference image is required")
        v1, v2 = self.pseudo_tokens(images, image_embeds)
        return self.encode(self.prompts_for(captions), v1, v2)


def conditioning_path(folder: str | Path, query_id: str) -> Path:
    """Where the conditioning of `query_id` is stored under `folder`."""
    return Path(folder) / f"{query_stem(query_id)}.safetensors"


def save_conditioning(folder: str | Path, query_id: str, cond: Conditioning) -> Path:
    """Write one query's conditioning ([L, H1+H2] and [P2], fp32) atomically; returns the file."""
    from safetensors.torch import save_file

    if len(cond) != 1:
        raise ValueError(f"save_conditioning takes one query, got {len(cond)} rows")
    path = conditioning_path(folder, query_id)
    tensors = {PROMPT_KEY: cond.prompt_embeds[0].float().contiguous(),
               POOLED_KEY: cond.pooled_prompt_embeds[0].float().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"query_id": str(query_id)})
    return path


def load_conditioning(folder: str | Path, query_id: str) -> Conditioning:
    """Read one query's conditioning saved by `save_conditioning` (a batch of one row).

    Raises:
        DataError: missing or unreadable file, or one written for another query id.
    """
    from safetensors import safe_open

    path = conditioning_path(folder, query_id)
    if not path.is_file():
        raise DataError(f"{path}: no saved conditioning for query {query_id!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored_id = (f.metadata() or {}).get("query_id")
            states, pooled = f.get_tensor(PROMPT_KEY), f.get_tensor(POOLED_KEY)
    except Exception as exc:
        raise DataError(f"{path}: unreadable conditioning ({type(exc).__name__}: {exc})") from exc
    if stored_id is not None and stored_id != str(query_id):
        raise DataError(f"{path}: holds the conditioning of query {stored_id!r}, not {query_id!r}")
    return Conditioning(states.unsqueeze(0), pooled.unsqueeze(0))


def build_composed_conditioner(backbone_1, phi_1, backbone_2=None, phi_2=None, template: str = "default",
                               device: str | None = "cpu", dtype: str = "fp32",
                               pad_id: int | None = OFFICIAL_PAD_ID) -> ComposedConditioner:
    """The one place a `ComposedConditioner` is assembled from names or loaded models (generate, serve).

    Args:
        backbone_1 / backbone_2: a `Backbone` or a name / hub id / folder (tower 2 defaults to tower 1).
        phi_1 / phi_2: an inversion network or a path (phi_2 defaults to phi_1 on the same tower).
        template: prompt template name or text.
        device / dtype: where names are loaded.
        pad_id: see `ComposedConditioner.pad_id` (None: the tokenizers' own padding).
    Returns:
        The conditioner; each Phi is checked against its tower's dims first.
    """
    def tower(source):
        return Backbone.load(source, device=device, dtype=dtype) if isinstance(source, str) else source

    def network(source, backbone):
        net = load_inversion_network(source, device=backbone.device) if not isinstance(source, torch.nn.Module) \
            else source
        net = net.to(backbone.dtype)
        check_fits(net, backbone)
        return net

    same_tower = backbone_2 is None or backbone_2 is backbone_1 or backbone_2 == backbone_1
    first = tower(backbone_1)
    second = first if same_tower else tower(backbone_2)
    net_1 = network(phi_1, first)
    net_2 = net_1 if same_tower and phi_2 in (None, phi_1) else network(phi_2 if phi_2 is not None else phi_1,
                                                                         second)
    return ComposedConditioner(first, net_1, second, net_2, PromptTemplate.named(template), pad_id)
