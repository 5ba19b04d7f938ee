"""The world's base generator (CIG's stock-SDXL analogue): pretraining, reuse, the shipped weights."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("diffusers")


def test_fast_base_pretrains_is_reused_and_assembles_a_loadable_pipeline(tiny_backbone, tmp_path):
    from zscir.demo.world_generator import BASE_LOG, assemble_pipeline, base_fingerprint, world_generator_base
    from zscir.generation.cig import load_generator

    base, report = world_generator_base(tmp_path, tiny_backbone, fast=True, progress=False)
    assert report["source"] == "trained here" and not report.get("reused")
    log = json.loads((base / BASE_LOG).read_text())
    assert log["text"] == tiny_backbone.text_fingerprint()
    held = log["report"]["heldout_denoising"]
    assert held["trained"]["n"] == held["random_unet"]["n"] > 0
    assert log["report"]["vae"]["recon_mse_trained"] < log["report"]["vae"]["recon_mse_random"]
    again, second = world_generator_base(tmp_path, tiny_backbone, fast=True, progress=False)
    assert again == base and second["reused"] and base_fingerprint(again) == base_fingerprint(base)

    pipe = load_generator(assemble_pipeline(tiny_backbone, base, tmp_path / "pipeline"))
    from diffusers import UNet2DConditionModel

    base_unet = UNet2DConditionModel.from_pretrained(str(base / "unet"))
    for (name, a), (_, b) in zip(sorted(pipe.unet.state_dict().items()), sorted(base_unet.state_dict().items())):
        assert torch.equal(a, b), name
    from diffusers import AutoencoderKL

    base_vae = AutoencoderKL.from_pretrained(str(base / "vae")).state_dict()
    assert all(torch.equal(v, base_vae[k]) for k, v in pipe.vae.state_dict().items())


def test_a_base_of_another_text_tower_is_not_used(tiny_backbone, tmp_path, monkeypatch):
    """The shipped base conditions on the shipped CLIP's text tower: any other CLIP gets a base trained here,
    the same CLIP gets the shipped folder itself (the full-size path, with the recipe shrunk to seconds)."""
    from zscir.demo import world_generator

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(world_generator, "SHIPPED_GENERATOR", shipped)
    recipe_class, small = world_generator.GeneratorBaseRecipe, world_generator.fast_recipe()
    monkeypatch.setattr(world_generator, "GeneratorBaseRecipe", lambda **fields: recipe_class(**fields) if fields
                        else small)  # the default recipe, shrunk; read_recipe still builds any recipe
    (shipped / world_generator.BASE_LOG).write_text(json.dumps({"text": "another tower", "report": {}}))
    folder, report = world_generator.world_generator_base(tmp_path / "cache", tiny_backbone, progress=False)
    assert report["source"] == "trained here" and folder != shipped and (folder / "unet").is_dir()

    (shipped / world_generator.BASE_LOG).write_text(json.dumps({"text": tiny_backbone.text_fingerprint(),
                                                                "report": {}}))
    folder, report = world_generator.world_generator_base(tmp_path / "cache", tiny_backbone, progress=False)
    assert report["source"] == "shipped" and folder == shipped
    folder, report = world_generator.world_generator_base(tmp_path / "cache", tiny_backbone, train=True,
                                                          progress=False)
    assert report["source"] == "trained here"  # --train-generator retrains even when the shipped one fits


def test_shipped_base_is_the_code_recipe_for_the_shipped_clip_and_reads_its_captions(tmp_path):
    """The shipped base: trained with the recipe in the code, on the shipped CLIP's text tower; on fresh world
    scenes its denoising loss is far below a random UNet's and lower with the caption than without it."""
    from zscir.data.synthetic.corpora import clip_pair_sampler
    from zscir.demo.world_generator import (
        BASE_LOG,
        SHIPPED_GENERATOR,
        GeneratorBaseRecipe,
        denoising_loss,
        read_recipe,
    )
    from zscir.demo.world_models import SHIPPED_CLIP, unpack_world_clip
    from zscir.generation.tiny import build_tiny_unet
    from zscir.models.backbone import Backbone

    log = json.loads((SHIPPED_GENERATOR / BASE_LOG).read_text())
    assert log["recipe"] == json.loads(json.dumps(asdict(GeneratorBaseRecipe())))
    shipped = Backbone.load(str(unpack_world_clip(SHIPPED_CLIP, tmp_path / "clip")))
    assert log["text"] == shipped.text_fingerprint()

    recipe = read_recipe(SHIPPED_GENERATOR)
    images, captions = clip_pair_sampler(image_size=recipe.image_size, relative_fraction=0.0, pair_fraction=0.0)(
        random.Random("test-fresh-scenes"), 64)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    trained = denoising_loss(SHIPPED_GENERATOR, shipped, paths, captions)
    random_dir = tmp_path / "random-unet"
    build_tiny_unet(2 * shipped.hidden_size, shipped.projection_dim, recipe.size(), seed=1).save_pretrained(
        str(random_dir))
    untrained = denoising_loss(SHIPPED_GENERATOR, shipped, paths, captions, unet_dir=random_dir)
    assert trained["conditioned"] < 0.5 * untrained["conditioned"]
    assert trained["conditioned"] < trained["unconditioned"]


def test_train_world_generator_command_trains_a_loadable_base(tiny_clip_dir, tmp_path, capsys):
    from zscir.cli import main
    from zscir.demo.world_generator import BASE_LOG, read_recipe

    out = tmp_path / "base"
    assert main(["train-world-generator", "--output-dir", str(out), "--clip", str(tiny_clip_dir), "--scenes", "8",
                 "--vae-steps", "2", "--unet-steps", "2", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["train_images"] == 8 and report["unet"]["steps"] == 2
    assert read_recipe(out).images == 8 and (out / "unet" / "config.json").is_file()
    assert json.loads((out / BASE_LOG).read_text())["report"] == report
    assert main(["train-world-generator", "--output-dir", str(out), "--clip", str(tiny_clip_dir)]) == 2  # not empty
