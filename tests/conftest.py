"""Shared fixtures: tiny CLIP backbones built from configs (offline, CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_CORPUS = [
    "a photo of a red circle on a white background",
    "a small blue square at the top left",
    "make the circle green and remove the star",
    "turn the red square into a triangle",
    "a ball with all colours in the center",
    "change the background to black",
    "a photo of $ that is blue",
    "add a large yellow hexagon at the bottom right",
    "move the star to the middle",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A CLIP-format BPE tokenizer trained on a few sentences (`$` is one token)."""
    from zscir.models.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(TINY_CORPUS * 4, vocab_size=700, model_max_length=16)


@pytest.fixture(scope="session")
def real_clip_tokenizer():
    """OpenAI CLIP's real tokenizer (vocab 49408), built from the vendored BPE merges."""
    from zscir.models.tokenizer import openai_clip_tokenizer

    return openai_clip_tokenizer(model_max_length=77)


@pytest.fixture(scope="session", params=["world-bpe", "real-clip-bpe"])
def clip_tokenizer(request):
    """Each test that takes this runs twice: on the small trained BPE and on the real CLIP BPE."""
    return request.getfixturevalue("tiny_tokenizer" if request.param == "world-bpe" else "real_clip_tokenizer")


@pytest.fixture(scope="session")
def tiny_size():
    """A CLIP small enough for unit tests; projection ≠ hidden so dims cannot be confused."""
    from zscir.models.factory import ClipSize

    return ClipSize(projection_dim=24, text_hidden=32, text_layers=2, text_heads=2, context_length=16,
                    vision_hidden=32, vision_layers=2, vision_heads=2, image_size=16, patch_size=8)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_tokenizer, tiny_size):
    """Folder with a random tiny CLIPModel + tokenizer + processor, loadable by `Backbone.load`."""
    from zscir.models.factory import build_clip, save_clip_folder

    folder = tmp_path_factory.mktemp("tiny-clip")
    save_clip_folder(build_clip(tiny_tokenizer, tiny_size, seed=0), tiny_tokenizer, folder, tiny_size)
    return folder


@pytest.fixture(scope="session")
def tiny_real_clip_dir(tmp_path_factory, real_clip_tokenizer, tiny_size):
    """Like `tiny_clip_dir`, but with the real CLIP tokenizer (token embedding 49408 × 32)."""
    import copy

    from zscir.models.factory import build_clip, save_clip_folder

    folder = tmp_path_factory.mktemp("tiny-real-clip")
    tokenizer = copy.deepcopy(real_clip_tokenizer)  # save_clip_folder sets the context length on it
    save_clip_folder(build_clip(tokenizer, tiny_size, seed=0), tokenizer, folder, tiny_size)
    return folder


@pytest.fixture()
def tiny_backbone(tiny_clip_dir):
    """A fresh `Backbone` on the tiny CLIP (fp32, CPU)."""
    from zscir.models.backbone import Backbone

    return Backbone.load(str(tiny_clip_dir))


@pytest.fixture()
def tiny_real_backbone(tiny_real_clip_dir):
    """A fresh `Backbone` on the tiny CLIP with the real CLIP tokenizer (fp32, CPU)."""
    from zscir.models.backbone import Backbone

    return Backbone.load(str(tiny_real_clip_dir))


@pytest.fixture(params=["world-bpe", "real-clip-bpe"])
def any_backbone(request):
    """Each test that takes this runs twice: tiny CLIP on the world's BPE and on the real CLIP BPE."""
    return request.getfixturevalue("tiny_backbone" if request.param == "world-bpe" else "tiny_real_backbone")


def stale_temp(path, pid=None):
    """The temp-file path a killed writer of `path` would have left (`atomic_path`'s name, a dead pid).

    With `pid`, the temp name of that process instead.
    """
    import subprocess
    import sys
    from pathlib import Path

    from zscir.utils.io import temp_name

    if pid is None:
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        pid = child.stdout.strip()
    path = Path(path)
    mine = temp_name(path)  # .{name}.{pid}-{host}-{hex}.tmp with this process's pid
    own = mine[len(path.name) + 2:].split("-", 1)[0]
    return path.parent / mine.replace(f".{own}-", f".{pid}-", 1)
