"""Textual-inversion networks: Phi (SEARLE / LinCIR) and Pic2Word's mapping network.

Both map an image (or text) embedding of size P to one token embedding of size H. They load from
the published checkpoint formats unchanged and from zscir's own self-describing folders
(`config.json` + `model.safetensors`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from zscir.errors import ModelLoadError, first_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Phi(nn.Module):
    """Phi = Linear(P→D) → GELU → Dropout → Linear(D→D) → GELU → Dropout → Linear(D→H), D = 4P by default.

    Args:
        input_dim: P, the embedding size it reads.
        output_dim: H, the token-embedding size it writes.
        hidden_dim: D (4P in the published checkpoints).
        dropout: p (0.5 in training; eval mode at inference).
    """

    kind = "phi"

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None, dropout: float = 0.5):
        super().__init__()
        hidden_dim = hidden_dim or 4 * input_dim
        self.config = dict(input_dim=input_dim, output_dim=output_dim, hidden_dim=hidden_dim, dropout=dropout)
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


class Pic2WordMapper(nn.Module):
    """Pic2Word's mapping network: n blocks of Linear→Dropout→ReLU (width D), then Linear(D→H).

    State-dict keys: `layers.{i}.0.*` for the blocks and `fc_out.*`.
    """

    kind = "pic2word"

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 512, num_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.config = dict(input_dim=input_dim, output_dim=output_dim, hidden_dim=hidden_dim, num_layers=num_layers,
                           dropout=dropout)
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


def _network_from_config(config_path: Path) -> nn.Module:
    """The (untrained) network a zscir `config.json` describes; unknown or missing fields are one-line errors."""
    from zscir.utils.io import read_json

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
    bad = [k for k, v in config.items() if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool))]
    if bad:
        raise ModelLoadError(f"{config_path}: field {bad[0]} must be a number, got {config[bad[0]]!r}")
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{config_path}: cannot build a {kind} network from it ({first_line(exc)})") from exc


def save_pretrained(net: nn.Module, folder: str | Path) -> Path:
    """Write `config.json` (kind + dims) and `model.safetensors`; reload with `load_inversion_network(folder)`."""
    from safetensors.torch import save_file

    from zscir.utils.io import atomic_path, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    write_json_atomic(folder / CONFIG_NAME, {"kind": net.kind, **net.config})
    return folder


def save_published_phi(phi: Phi, path: str | Path) -> Path:
    """Write the published `{'Phi': state_dict}` format (readable by SEARLE / LinCIR / RTD code)."""
    from zscir.utils.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"Phi": {k: v.detach().cpu() for k, v in phi.state_dict().items()}}, tmp)
    return Path(path)


def load_inversion_network(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load Phi or Pic2Word from any supported format, in eval mode.

    Args:
        path: a zscir folder (config.json + model.safetensors), a published `{'Phi': ...}` file, or a
            Pic2Word checkpoint with `state_dict_img2text`.
    Raises:
        ModelLoadError: missing file or unrecognised content (the message names what was found).
    """
    path = Path(path)
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise ModelLoadError(f"{path}: no {CONFIG_NAME}; expected a folder written by zscir's save_pretrained")
        net = _network_from_config(config_path)
        load_state_checked(net, read_safetensors(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME))
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
    from zscir.utils.device import check_device

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


def check_fits(net: nn.Module, backbone) -> None:
    """Refuse an inversion network whose dims do not match the backbone, naming both shapes."""
    expected = (backbone.projection_dim, backbone.hidden_size)
    got = (net.config["input_dim"], net.config["output_dim"])
    if got != expected:
        raise ModelLoadError(
            f"inversion network maps {got[0]} → {got[1]} but backbone {backbone.name!r} needs "
            f"{expected[0]} (image embedding) → {expected[1]} (token embedding)"
        )
