"""Inversion networks: published formats, our format, dims checks, RTD text towers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zscir.errors import ModelLoadError
from zscir.models.phi import (
    Phi,
    Pic2WordMapper,
    check_fits,
    load_inversion_network,
    save_published_phi,
)


def test_published_phi_round_trips_into_our_format(tmp_path):
    torch.manual_seed(0)
    original = Phi(24, 32, 96, dropout=0.5).eval()
    x = torch.randn(5, 24)
    torch.save({"Phi": original.state_dict(), "epoch": 3}, tmp_path / "phi_best.pt")
    assert sorted({k.split(".")[1] for k in original.state_dict()}) == ["0", "3", "6"]
    loaded = load_inversion_network(tmp_path / "phi_best.pt")
    loaded.save_pretrained(tmp_path / "ours")
    ours = load_inversion_network(tmp_path / "ours")
    published_again = load_inversion_network(save_published_phi(ours, tmp_path / "again.pt"))
    with torch.no_grad():
        for net in (loaded, ours, published_again):
            assert isinstance(net, Phi) and not net.training
            torch.testing.assert_close(net(x), original(x), atol=0, rtol=0)


def test_pic2word_checkpoint_with_module_prefix(tmp_path):
    torch.manual_seed(0)
    mapper = Pic2WordMapper(24, 32, hidden_dim=16, num_layers=2).eval()
    state = {f"module.{k}": v for k, v in mapper.state_dict().items()}
    torch.save({"state_dict_img2text": state, "epoch": 1}, tmp_path / "pic2word.pt")
    loaded = load_inversion_network(tmp_path / "pic2word.pt")
    loaded.save_pretrained(tmp_path / "ours")
    reloaded = load_inversion_network(tmp_path / "ours")
    x = torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mapper(x), atol=0, rtol=0)
        torch.testing.assert_close(reloaded(x), mapper(x), atol=0, rtol=0)


def test_dims_mismatch_names_both_shapes(tiny_backbone):
    check_fits(Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size), tiny_backbone)
    with pytest.raises(ModelLoadError, match=r"768 → 32.*needs 24 \(image embedding\) → 32"):
        check_fits(Phi(768, 32), tiny_backbone)


def test_unrecognised_checkpoint_is_refused(tmp_path):
    torch.save({"something": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match="no 'Phi'"):
        load_inversion_network(tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_inversion_network(tmp_path / "missing.pt")


def test_rtd_text_encoder_file_and_folder(tmp_path, tiny_backbone):
    from zscir.models.text_tower import load_text_tower, save_text_tower

    tuned = load_text_tower(save_text_tower(tiny_backbone.text, tmp_path / "hf"), like=tiny_backbone.text)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01)
    save_text_tower(tuned, tmp_path / "hf2", rtd_file=tmp_path / "text_encoder_best.pt")
    from_folder = load_text_tower(tmp_path / "hf2", like=tiny_backbone.text)
    from_rtd = load_text_tower(tmp_path / "text_encoder_best.pt", like=tiny_backbone.text)
    texts = ["a photo of $ that is blue"]
    v = torch.randn(1, tiny_backbone.hidden_size)
    a = tiny_backbone.with_text_tower(from_folder).encode_text(texts, pseudo_tokens=v)
    b = tiny_backbone.with_text_tower(from_rtd).encode_text(texts, pseudo_tokens=v)
    base = tiny_backbone.encode_text(texts, pseudo_tokens=v)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base)
    torch.save({"CLIPTextModelWithProjection": {"bad": torch.zeros(2)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_text_tower(tmp_path / "bad.pt", like=tiny_backbone.text)


# ---------------------------------------------------------------------------------------------
# Hub models (huggingface_hub's PyTorchModelHubMixin) and the recorded backbone


def test_phi_and_pic2word_are_hub_models_with_a_model_card(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 24)
    for net in (Phi(24, 32, 48, backbone="ViT-L/14").eval(), Pic2WordMapper(24, 32, 16, backbone="ViT-L/14").eval()):
        folder = tmp_path / net.kind
        net.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        assert config["kind"] == net.kind and config["backbone"] == "ViT-L/14" and config["input_dim"] == 24
        card = (folder / "README.md").read_text()
        assert "ViT-L/14" in card and "library_name: zscir" in card and type(net).__name__ in card
        again = type(net).from_pretrained(folder)
        loaded = load_inversion_network(folder)
        with torch.no_grad():
            torch.testing.assert_close(again(x), net(x), atol=0, rtol=0)
            torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
        assert again.config["backbone"] == "ViT-L/14" and not again.training
    with pytest.raises(ModelLoadError, match="pic2word"):
        Phi.from_pretrained(tmp_path / "pic2word")


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    """The hub is unreachable here: the upload is captured at HfApi and checked for what would be published."""
    import huggingface_hub

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()),
                        config=json.loads((Path(folder_path) / "config.json").read_text()))
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    Phi(24, 32, backbone="ViT-B/32").push_to_hub("someone/phi-b32", token="not-a-token")
    assert uploaded["repo"] == "someone/phi-b32"
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert uploaded["config"]["backbone"] == "ViT-B/32" and uploaded["config"]["kind"] == "phi"


def test_a_phi_for_another_backbone_is_refused_by_name():
    from types import SimpleNamespace

    phi = Phi(768, 768, 64, backbone="ViT-L/14")
    laion_l14 = SimpleNamespace(name="laion/CLIP-ViT-L-14-laion2B-s32B-b82K", projection_dim=768, hidden_size=768)
    with pytest.raises(ModelLoadError, match="trained for backbone 'ViT-L/14'"):
        check_fits(phi, laion_l14)  # same dims: only the name tells them apart
    for same in ("ViT-L/14", "L14", "openai/clip-vit-large-patch14"):
        check_fits(phi, SimpleNamespace(name=same, projection_dim=768, hidden_size=768))
    check_fits(Phi(768, 768, 64), laion_l14)  # published checkpoints record no backbone: dims only


def test_zscir_folders_written_before_the_hub_format_still_load(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = Phi(24, 32, 48).eval()
    tmp_path.joinpath("old").mkdir()
    save_file(net.state_dict(), str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text(json.dumps({"kind": "phi", "input_dim": 24, "output_dim": 32,
                                                              "hidden_dim": 48, "dropout": 0.5}))
    loaded = load_inversion_network(tmp_path / "old")
    x = torch.randn(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    assert loaded.config["backbone"] is None


def test_zscir_models_describes_only_methods_that_exist(capsys):
    import re

    import zscir.models.phi as phi_module
    from zscir.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    mentioned = re.findall(r"\b(Phi|Pic2WordMapper)\.(\w+)", out)
    assert mentioned
    for cls, method in mentioned:
        assert callable(getattr(getattr(phi_module, cls), method, None)), f"{cls}.{method}"
