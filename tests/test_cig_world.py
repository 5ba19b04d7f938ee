"""CIG on the synthetic world: a really trained VAE, and the demo stage end to end (tiny world, tiny CLIP)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zscir.data.synthetic.world import WorldSizes, build_world

    root = tmp_path_factory.mktemp("world")
    build_world(root / "data", sizes=WorldSizes.small())
    return root


@pytest.fixture(scope="module")
def cirr(world):
    from zscir.data.records import load_benchmark

    return {split: load_benchmark("cirr", world / "data" / "cirr", split)[0] for split in ("train", "val")}


def test_kl_term_matches_the_closed_form():
    """The wrapper's KL per latent element equals torch.distributions' KL(N(mu, s^2) || N(0, 1)), averaged."""
    from torch.distributions import Normal, kl_divergence

    from zscir.generation.tiny import TinySDXLSize, build_tiny_vae
    from zscir.training.vae import AutoencoderWithKL

    vae = build_tiny_vae(TinySDXLSize(vae_channels=(8, 16)), seed=3).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    recon, kl = AutoencoderWithKL(vae)(x)
    post = vae.encode(x).latent_dist
    expected = kl_divergence(Normal(post.mean, post.std), Normal(0.0, 1.0)).flatten(1).mean(1)
    assert recon.shape == x.shape
    torch.testing.assert_close(kl, expected, atol=1e-5, rtol=1e-4)


def test_reconstruction_mse_matches_a_per_image_loop():
    from zscir.generation.tiny import TinySDXLSize, build_tiny_vae
    from zscir.training.vae import reconstruction_mse

    vae = build_tiny_vae(TinySDXLSize(vae_channels=(8, 16)), seed=1)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        per_image = [((vae.decode(vae.encode(x[i : i + 1]).latent_dist.mode()).sample - x[i : i + 1]) ** 2).mean()
                     for i in range(5)]
    assert reconstruction_mse(vae, x, batch_size=2) == pytest.approx(float(torch.stack(per_image).mean()), rel=1e-5)


def test_trained_vae_reconstructs_held_out_images_better_than_the_random_one(world, cirr, tmp_path):
    from diffusers import AutoencoderKL

    from zscir.generation.tiny import TinySDXLSize, build_tiny_vae
    from zscir.training.config import VAETrainConfig
    from zscir.training.vae import install_vae, load_pixels, reconstruction_mse, train_vae

    torch.set_num_threads(1)
    start = tmp_path / "random-vae"
    build_tiny_vae(TinySDXLSize(vae_channels=(8, 16)), seed=0).save_pretrained(str(start))
    train_images = list(cirr["train"].images.values())
    held_out = list(cirr["val"].images.values())[:24]  # other split: never trained on
    config = VAETrainConfig(output_dir=str(tmp_path / "run"), vae=str(start), resolution=24, max_steps=40,
                            batch_size=8, cpu=True, report_to="none", progress=False, checkpoint_every=40)
    result = train_vae(config, train_images)
    pixels = load_pixels(held_out, 24)
    before = reconstruction_mse(AutoencoderKL.from_pretrained(str(start)), pixels)
    trained = AutoencoderKL.from_pretrained(str(result.final_dir / "vae"))
    after = reconstruction_mse(trained, pixels)
    assert after < 0.5 * before, (before, after)
    # SD's convention: scaled latents have unit std on the training images
    with torch.no_grad():
        z = trained.encode(load_pixels(train_images, 24)).latent_dist.sample() * trained.config.scaling_factor
    assert 0.8 < float(z.std()) < 1.25
    # the trained VAE replaces a pipeline's vae/ and loads from there
    pipe_dir = tmp_path / "pipe"
    (pipe_dir / "vae").mkdir(parents=True)
    install_vae(pipe_dir, result.final_dir / "vae")
    reloaded = AutoencoderKL.from_pretrained(str(pipe_dir), subfolder="vae")
    assert reconstruction_mse(reloaded, pixels) == pytest.approx(after)


def test_selection_split_holds_its_images_out_of_generator_training(world):
    from zscir.demo.cig_stage import generator_images, selection_split

    selection, train, held = selection_split(world / "data" / "cirr", every=2, max_queries=100)
    assert selection.queries and selection.gallery == train.gallery
    used = {p for p in generator_images(train, held, None)}
    for q in selection.queries:
        for name in (q.reference, *q.targets, *q.group):
            assert train.images[name] not in used


def test_cig_stage_fast_end_to_end_and_reused(world, cirr, tiny_backbone, tmp_path):
    from zscir.demo.cig_stage import ROW, run_cig_stage
    from zscir.demo.world_generator import world_generator_base
    from zscir.generation.cig import image_path
    from zscir.models.phi import Phi
    from zscir.retrieval.features import FeatureCache

    torch.manual_seed(0)
    phi = Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size).eval()
    cache = FeatureCache(tmp_path / "features", progress=False)
    split = cirr["val"]
    out = tmp_path / "cig"
    # the tiny test CLIP is not the shipped one, so the base is pretrained here (fast recipe)
    base, base_report = world_generator_base(tmp_path / "cache", tiny_backbone, fast=True, progress=False)
    assert base_report["source"] == "trained here" and (base / "unet" / "config.json").is_file()
    result = run_cig_stage(world, tiny_backbone, phi, [split], cache, out, base, fast=True, progress=False,
                           threads=1)
    assert set(result["rows"][ROW]) == {split.name} and "Avg" in result["rows"][ROW][split.name]
    assert result["alpha"] in {float(a) for a in result["sweep"]["selection"]}
    assert result["alpha_selected_on"] != split.name
    assert result["vae"]["recon_mse_trained"] < result["vae"]["recon_mse_random"]
    # the stage fine-tuned the base UNet (same architecture, other weights)
    from diffusers import UNet2DConditionModel

    tuned = UNet2DConditionModel.from_pretrained(str(out / "generator" / "unet")).state_dict()
    start = UNet2DConditionModel.from_pretrained(str(base / "unet")).state_dict()
    assert tuned.keys() == start.keys() and any(not torch.equal(tuned[k], start[k]) for k in tuned)
    assert all(image_path(result["pseudo_dir"][split.name], q.query_id).is_file() for q in split.queries)
    # α = 1 of the reported sweep is plain Phi retrieval
    from zscir.evaluation.runner import Evaluator

    plain = Evaluator(tiny_backbone, split, cache).evaluate("phi", phi=phi).metrics
    assert result["sweep"]["reported"]["1.0"][split.name] == pytest.approx(plain)
    assert (out / "examples.png").is_file() and result["examples"][0]["pseudo"]
    marker = json.loads((out / "zscir_done.json").read_text())
    assert marker["report"]["rows"] == result["rows"]

    again = run_cig_stage(world, tiny_backbone, phi, [split], cache, out, base, fast=True, progress=False, threads=1)
    assert again["reused"] and again["rows"] == result["rows"]
