"""Textual-inversion networks: Phi (SEARLE / LinCIR) and Pic2Word's mapping network.

Both map an image (or text) embedding of size P to one token embedding of size H. They load from
the published checkpoint formats unchanged and from zscir's own self-describing folders
(`config.json` + `model.safetensors` + a generated model card `README.md`). Both are hub models
through huggingface_hub's `PyTorchModelHubMixin`: `Phi.from_pretrained(folder_or_repo)`,
`phi.save_pretrained(folder)`, `phi.push_to_hub("owner/repo")`. The config records the backbone the
network was trained for, so a Phi used with another backbone is refused by name before anything is encoded.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from torch import nn

from zscir.errors import ModelLoadError, first_line
from zscir.models.zoo import resolve_phi
from zscir.registry import ALIASES, BACKBONES, resolve_backbone
from zscir.utils.device import check_device
from zscir.utils.io import atomic_path, read_json, write_json_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

MODEL_CARD = """---
{{ card_data }}
---

# {{ title }}

A zscir {{ kind_text }}: it maps a CLIP image embedding of **{{ backbone }}** ({{ input_dim }} dims) to one
token embedding ({{ output_dim }} dims) that stands for the image as the pseudo word `$` in prompts such as
"a photo of $ that {caption}" (zero-shot composed image retrieval).

## Backbone
{{ backbone }}{% if backbone_note %} ({{ backbone_note }}){% endif %}. zscir refuses to use this network with
another backbone.

## Training recipe
{% if method %}Method: **{{ method }}**.
{% endif %}{% if recipe %}
| field | value |
|---|---|
{% for key, value in recipe.items() %}| {{ key }} | {{ value }} |
{% endfor %}{% else %}Not recorded.
{% endif %}
## Training data
{{ data or "Not recorded." }}

## Metrics of the run
{% if metrics %}| metric | value |
|---|---|
{% for key, value in metrics.items() %}| {{ key }} | {{ value }} |
{% endfor %}{% else %}None recorded (no validation in this run).
{% endif %}
## Use

```python
from zscir.models.phi import {{ class_name }}
net = {{ class_name }}.from_pretrained("{{ repo_id }}")   # a local folder or a hub repo id
```

or on the command line: `zscir evaluate ... --backbone {{ backbone }} --method phi --phi <folder>`.
"""


class InversionNetwork(nn.Module, PyTorchModelHubMixin, library_name="zscir", model_card_template=MODEL_CARD,
                       tags=["zero-shot-composed-image-retrieval", "textual-inversion", "clip"]):
    """Shared hub behaviour of Phi and Pic2Word: zscir's folder format and the generated model card.

    Subclasses set `kind`, build `self.config` (dims + `backbone`) in `__init__`; `self.card_info` may hold
    method / recipe / data / metrics for the model card (filled by the trainers).
    """

    kind = "inversion"
    kind_text = "inversion network"

    def _save_pretrained(self, save_directory: Path) -> None:
        """Weights as `model.safetensors` and `config.json` = {kind, dims, backbone} (what the loaders read)."""
        from safetensors.torch import save_file

        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        write_json_atomic(save_directory / CONFIG_NAME, {"kind": self.kind, **self.config})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", **model_kwargs):
        """Build from a folder / hub repo written by `save_pretrained`, with `load_inversion_network`'s checks
        (fields, weights that fit); a folder holding another kind of network is refused."""
        if Path(model_id).is_dir():
            folder = Path(model_id)
        else:
            from huggingface_hub import hf_hub_download

            for name in (CONFIG_NAME, WEIGHTS_NAME):
                found = hf_hub_download(model_id, name, revision=revision, cache_dir=cache_dir, token=token,
                                        force_download=force_download, local_files_only=local_files_only)
            folder = Path(found).parent
        net = load_folder(folder)
        if not isinstance(net, cls):
            raise ModelLoadError(f"{model_id}: holds a {net.kind!r} network, not {cls.kind!r}; use "
                                 "zscir.models.phi.load_inversion_network for any kind")
        return net.to(map_location).eval()

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The model card: backbone, training recipe, data and the run's metrics (from `self.card_info`)."""
        info = {**getattr(self, "card_info", {}), **kwargs}
        backbone = self.config.get("backbone") or "unrecorded"
        data = ModelCardData(library_name="zscir", tags=sorted(self._hub_mixin_info.model_card_data.tags or []))
        values: dict[str, Any] = dict(
            title=info.get("title") or f"{info.get('method') or self.kind_text.capitalize()} for {backbone}",
            kind_text=self.kind_text, backbone=backbone, backbone_note=info.get("backbone_note"),
            input_dim=self.config["input_dim"], output_dim=self.config["output_dim"], method=info.get("method"),
            recipe=info.get("recipe") or {}, data=info.get("data"), metrics=info.get("metrics") or {},
            class_name=type(self).__name__, repo_id=info.get("repo_id") or "<folder or owner/repo>",
        )
        return ModelCard.from_template(card_data=data, template_str=MODEL_CARD, **values)


class Phi(InversionNetwork):
    """Phi = Linear(P→D) → GELU → Dropout → Linear(D→D) → GELU → Dropout → Linear(D→H), D = 4P by default.

    Args:
        input_dim: P, the embedding size it reads.
        output_dim: H, the token-embedding size it writes.
        hidden_dim: D (4P in the published checkpoints).
        dropout: p (0.5 in training; eval mode at inference).
        backbone: the backbone it was trained for (see `backbone_identity`); None = not recorded.
    """

    kind = "phi"
    kind_text = "Phi (SEARLE / LinCIR textual-inversion network)"

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None, dropout: float = 0.5,
                 backbone: str | None = None):
        super().__init__()
        hidden_dim = hidden_dim or 4 * input_dim
        self.config = dict(input_dim=input_dim, output_dim=output_dim, hidden_dim=hidden_dim, dropout=dropout,
                           backbone=backbone)
        # Sequential indices 0/3/6 are the published state-dict keys.
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, P] → [B, H] pseudo tokens."""
        return self.layers(embeddings)

    @classmethod
    def from_state_dict(cls, state: dict, dropout: float = 0.5) -> Phi:
        """Build a Phi whose dims are read off a published `layers.{0,3,6}.*` state dict."""
        try:
            first, last = state["layers.0.weight"], state["layers.6.weight"]
        except KeyError as exc:
            keys = sorted(state)[:6]
            raise ModelLoadError(f"not a Phi state dict: missing key {exc.args[0]!r} (have {keys})") from exc
        phi = cls(first.shape[1], last.shape[0], first.shape[0], dropout)
        load_state_checked(phi, state, "Phi state dict")
        return phi


class Pic2WordMapper(InversionNetwork):
    """Pic2Word's mapping network: n blocks of Linear→Dropout→ReLU (width D), then Linear(D→H).

    State-dict keys: `layers.{i}.0.*` for the blocks and `fc_out.*`.
    """

    kind = "pic2word"
    kind_text = "Pic2Word mapping network"

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 512, num_layers: int = 2,
                 dropout: float = 0.1, backbone: str | None = None):
        super().__init__()
        self.config = dict(input_dim=input_dim, output_dim=output_dim, hidden_dim=hidden_dim, num_layers=num_layers,
                           dropout=dropout, backbone=backbone)
        blocks, width = [], input_dim
        for _ in range(num_layers):
            blocks.append(nn.Sequential(nn.Linear(width, hidden_dim), nn.Dropout(dropout), nn.ReLU()))
            width = hidden_dim
        self.layers = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(width, output_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, P] → [B, H] pseudo tokens."""
        return self.fc_out(self.layers(embeddings))

    @classmethod
    def from_state_dict(cls, state: dict) -> Pic2WordMapper:
        """Build from a Pic2Word `state_dict_img2text` (the `module.` prefix is stripped)."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
        if not blocks or "fc_out.weight" not in state:
            raise ModelLoadError(f"not a Pic2Word mapping state dict (have keys {sorted(state)[:6]})")
        if "layers.0.0.weight" not in state:
            raise ModelLoadError(f"not a Pic2Word mapping state dict: missing key 'layers.0.0.weight' "
                                 f"(have {sorted(state)[:6]})")
        first = state["layers.0.0.weight"]
        net = cls(first.shape[1], state["fc_out.weight"].shape[0], first.shape[0], len(blocks))
        load_state_checked(net, state, "Pic2Word state dict")
        return net


NETWORKS = {cls.kind: cls for cls in (Phi, Pic2WordMapper)}


def load_state_checked(net: nn.Module, state: dict, where: str) -> None:
    """`net.load_state_dict(state)` that fails with one line naming missing, unexpected and mis-shaped keys.

    Raises:
        ModelLoadError: "{where}: missing layers.6.weight; layers.3.weight is [96, 96] in the file, [128, 128]
            expected".
    """
    own = net.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif k in own and tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k} is {list(v.shape)} in the file, {list(own[k].shape)} expected")
    if problems:
        raise ModelLoadError(f"{where}: does not fit the network: " + "; ".join(problems[:4]))
    net.load_state_dict(state)


def load_folder(folder: Path) -> nn.Module:
    """The network of a zscir folder (config.json + model.safetensors), every field and weight checked."""
    net = _network_from_config(folder / CONFIG_NAME)
    load_state_checked(net, read_safetensors(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    return net


def _network_from_config(config_path: Path) -> nn.Module:
    """The (untrained) network a zscir `config.json` describes; unknown or missing fields are one-line errors."""
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected an object of network fields, got {type(config).__name__}")
    kind = config.pop("kind", "phi")
    if kind not in NETWORKS:
        raise ModelLoadError(f"{config_path}: unknown kind {kind!r}; expected one of {sorted(NETWORKS)}")
    cls = NETWORKS[kind]
    params = inspect.signature(cls.__init__).parameters
    known = [name for name in params if name != "self"]
    required = [name for name, p in params.items() if name != "self" and p.default is inspect.Parameter.empty]
    unknown = sorted(set(config) - set(known))
    absent = [name for name in required if name not in config]
    if unknown or absent:
        what = "; ".join(x for x in (unknown and f"unknown field(s) {', '.join(unknown)}",
                                     absent and f"missing field(s) {', '.join(absent)}") if x)
        raise ModelLoadError(f"{config_path}: {what} for kind {kind!r} (expected {', '.join(known)})")
    backbone = config.get("backbone")
    if backbone is not None and not isinstance(backbone, str):
        raise ModelLoadError(f"{config_path}: field backbone must be a backbone name, got {backbone!r}")
    bad = [k for k, v in config.items() if k != "backbone" and v is not None
           and (not isinstance(v, (int, float)) or isinstance(v, bool))]
    if bad:
        raise ModelLoadError(f"{config_path}: field {bad[0]} must be a number, got {config[bad[0]]!r}")
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{config_path}: cannot build a {kind} network from it ({first_line(exc)})") from exc


def save_pretrained(net: InversionNetwork, folder: str | Path) -> Path:
    """`net.save_pretrained(folder)` (weights, config, model card) returning the folder, for chaining."""
    net.save_pretrained(folder)
    return Path(folder)


class L2NormalizedInput(nn.Module):
    """An inversion network that reads L2-normalised embeddings: v = net(x / ‖x‖) (LinCIR's `--l2_normalize`).

    Keeps the wrapped network's `kind` (its method's prompt) and `config` (dims and backbone), so every check
    that applies to the network applies to the wrapper.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.kind = getattr(net, "kind", "phi")
        self.config = net.config

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, P] → [B, H] pseudo tokens of the normalised embeddings."""
        return self.net(torch.nn.functional.normalize(embeddings, dim=-1))


def save_published_phi(phi: Phi, path: str | Path) -> Path:
    """Write the published `{'Phi': state_dict}` format (readable by SEARLE / LinCIR / RTD code)."""
    with atomic_path(path) as tmp:
        torch.save({"Phi": {k: v.detach().cpu() for k, v in phi.state_dict().items()}}, tmp)
    return Path(path)


def load_inversion_network(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load Phi or Pic2Word from any supported format, in eval mode.

    Args:
        path: a zscir folder (config.json + model.safetensors), a published `{'Phi': ...}` file, or a
            Pic2Word checkpoint with `state_dict_img2text`; or, when no such path exists, a zoo name
            (`searle-vit-b32`, ...) or a hub id (`owner/repo`, `owner/repo/file.pt`), see `zscir.models.zoo`.
    Raises:
        ModelLoadError: missing file or unrecognised content (the message names what was found).
    """
    path = resolve_phi(path)
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise ModelLoadError(f"{path}: no {CONFIG_NAME}; expected a folder written by zscir's save_pretrained")
        net = load_folder(path)
    elif path.is_file():
        checkpoint = torch_load_weights(path)
        if isinstance(checkpoint, dict) and "Phi" in checkpoint:
            net = Phi.from_state_dict(checkpoint["Phi"])
        elif isinstance(checkpoint, dict) and "state_dict_img2text" in checkpoint:
            net = Pic2WordMapper.from_state_dict(checkpoint["state_dict_img2text"])
        elif isinstance(checkpoint, dict) and "layers.0.weight" in checkpoint:
            net = Phi.from_state_dict(checkpoint)
        else:
            keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ModelLoadError(f"{path}: no 'Phi' or 'state_dict_img2text' entry (found {keys})")
    else:
        raise ModelLoadError(f"{path}: no such file or folder")
    return net.to(check_device(device)).eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or foreign file is a one-line ModelLoadError."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (the weights of this folder)")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ValueError on truncated / foreign bytes
        raise ModelLoadError(f"{path}: not a readable safetensors file, truncated or damaged? ({first_line(exc)})") \
            from exc


def torch_load_weights(path: Path):
    """`torch.load(weights_only=True)` with one-line errors: corrupt files, and pickles that need code, are refused.

    Raises:
        ModelLoadError: names the file and says why (never unpickles arbitrary objects).
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path}: refused: this pickle holds more than tensors and plain containers, and loading "
                             f"it could run code ({first_line(exc)[:160]}); convert it to tensors only") from exc
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({first_line(exc)[:200]})") from exc


def backbone_identity(name_or_path: str) -> str | None:
    """What a Phi records as its backbone: the registered name for a registered name / alias / its hub id
    (so "L14", "ViT-L/14" and "openai/clip-vit-large-patch14" are one), a hub id as is, None for another
    local folder (its identity is unknown; only the dims can be checked)."""
    name = ALIASES.get(name_or_path, name_or_path)
    if name in BACKBONES:
        return name
    by_source = {spec.source: spec.name for spec in BACKBONES.values()}
    if name_or_path in by_source:
        return by_source[name_or_path]
    for spec in BACKBONES.values():  # a registered local folder (the synthetic world's CLIP)
        if spec.source.startswith("{cache}"):
            source, _ = resolve_backbone(spec.name)
            if Path(name_or_path).expanduser().resolve() == Path(source).resolve():
                return spec.name
    if Path(name_or_path).expanduser().exists():
        return None
    return name_or_path


def recorded_backbone(path: str | Path) -> str | None:
    """The backbone a saved inversion network was trained for, read from its config only (None: not recorded,
    or a published checkpoint, which records none)."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("backbone")
    except (OSError, ValueError):
        return None


def check_backbone_name(trained_for: str | None, backbone_name: str, what: str = "inversion network") -> None:
    """Refuse a network recorded for another backbone than `backbone_name` (both known), naming both."""
    here = backbone_identity(backbone_name)
    if trained_for and here and trained_for != here:
        raise ModelLoadError(f"{what} was trained for backbone {trained_for!r}, not {backbone_name!r}; "
                             "use it with its own backbone", setting="backbone")


def check_fits(net: nn.Module, backbone) -> None:
    """Refuse an inversion network trained for another backbone (by name) or whose dims do not match."""
    check_backbone_name(net.config.get("backbone"), backbone.name)
    expected = (backbone.projection_dim, backbone.hidden_size)
    got = (net.config["input_dim"], net.config["output_dim"])
    if got != expected:
        raise ModelLoadError(
            f"inversion network maps {got[0]} → {got[1]} but backbone {backbone.name!r} needs "
            f"{expected[0]} (image embedding) → {expected[1]} (token embedding)"
        )
