"""Inversion networks: published formats, our format, dims checks, RTD text towers."""

from __future__ import annotations

import pytest
import torch

from zscir.errors import ModelLoadError
from zscir.models.phi import (
    Phi,
    Pic2WordMapper,
    check_fits,
    load_inversion_network,
    save_pretrained,
    save_published_phi,
)


def test_published_phi_round_trips_into_our_format(tmp_path):
    torch.manual_seed(0)
    original = Phi(24, 32, 96, dropout=0.5).eval()
    x = torch.randn(5, 24)
    torch.save({"Phi": original.state_dict(), "epoch": 3}, tmp_path / "phi_best.pt")
    assert sorted({k.split(".")[1] for k in original.state_dict()}) == ["0", "3", "6"]
    loaded = load_inversion_network(tmp_path / "phi_best.pt")
    ours = load_inversion_network(save_pretrained(loaded, tmp_path / "ours"))
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
    reloaded = load_inversion_network(save_pretrained(loaded, tmp_path / "ours"))
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
