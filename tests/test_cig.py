"""CIG: composed SDXL conditioning, pseudo-target generation (retries, resume), generator training, fusion.

Everything runs on a tiny SDXL-architecture pipeline (CPU, 2 steps, 32×32) built on two tiny CLIPs
with different sizes, so that the order of the towers in the conditioning is observable.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

SIZE = 32


@pytest.fixture(scope="module")
def second_clip_dir(tmp_path_factory, tiny_tokenizer):
    """A second tiny CLIP with other dims (hidden 48, projection 20) and the same tokenizer."""
    from zscir.models.factory import ClipSize, build_clip, save_clip_folder

    size = ClipSize(projection_dim=20, text_hidden=48, text_layers=2, text_heads=2, context_length=16,
                    vision_hidden=32, vision_layers=2, vision_heads=2, image_size=16, patch_size=8)
    folder = tmp_path_factory.mktemp("tiny-clip-2")
    save_clip_folder(build_clip(tiny_tokenizer, size, seed=1), tiny_tokenizer, folder, size)
    return folder


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory, tiny_clip_dir, second_clip_dir):
    """Tiny SDXL pipeline folder: text_encoder = tiny CLIP (H 32), text_encoder_2 = second CLIP (H 48, P 20)."""
    from zscir.generation.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tiny_clip_dir, second_clip_dir, tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def conditioner(tiny_clip_dir, second_clip_dir):
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi

    b1, b2 = Backbone.load(str(tiny_clip_dir)), Backbone.load(str(second_clip_dir))
    torch.manual_seed(0)
    phi_1 = Phi(b1.projection_dim, b1.hidden_size).eval()
    phi_2 = Phi(b2.projection_dim, b2.hidden_size).eval()
    return ComposedConditioner(b1, phi_1, b2, phi_2)


@pytest.fixture(scope="module")
def pipe(sdxl_dir):
    from zscir.generation.cig import load_generator

    return load_generator(sdxl_dir)


def _image(seed: int, side: int = 24):
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(side // 2), rng.randrange(side // 2)
    draw.rectangle([x, y, x + side // 3, y + side // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


@pytest.fixture()
def split(tmp_path):
    """A CIRR-like split of 6 images and 3 queries, one with a FashionIQ-style id containing '/'."""
    from zscir.data.records import CIRSplit, Query

    images = {}
    for i in range(6):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        _image(i).save(path)
        images[f"img{i}"] = path
    group = tuple(images)
    queries = [Query("1", "img0", ("is red",), ("img1",), group),
               Query("2", "img2", ("has a circle",), ("img3",), group),
               Query("dress/0", "img4", ("is blue", "is longer"), ("img5",), group)]
    return CIRSplit("cirr", "cirr/val", images, list(images), queries)


def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ---- conditioning -----------------------------------------------------------------------------


def test_conditioning_equals_sdxl_encode_prompt_when_pseudo_token_is_a_word(conditioner, sdxl_dir):
    """$ = the token embedding of "red" must give exactly SDXL's own encoding of the prompt with "red"
    (with the tokenizers' own padding, as diffusers' `encode_prompt` pads; the official 0-padding is tested below)."""
    import dataclasses

    from diffusers import StableDiffusionXLPipeline

    conditioner = dataclasses.replace(conditioner, pad_id=None)

    full = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir))
    b1, b2 = conditioner.backbone_1, conditioner.backbone_2
    red = b1.tokenizer("red", add_special_tokens=False)["input_ids"]
    assert len(red) == 1
    v1 = b1.text.text_model.embeddings.token_embedding.weight[red[0]].unsqueeze(0)
    v2 = b2.text.text_model.embeddings.token_embedding.weight[red[0]].unsqueeze(0)
    ours = conditioner.encode(["a photo of $ that is big"], v1, v2)
    with torch.no_grad():
        ref, _, ref_pooled, _ = full.encode_prompt("a photo of red that is big", do_classifier_free_guidance=False)
    assert ours.prompt_embeds.shape == (1, 16, 32 + 48) and ours.pooled_prompt_embeds.shape == (1, 20)
    torch.testing.assert_close(ours.prompt_embeds, ref.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooled_prompt_embeds, ref_pooled.float(), atol=1e-5, rtol=1e-5)


def test_conditioning_order_and_pooled_from_tower_2(conditioner):
    """Tower 1's penultimate states fill the first H1 features; pooled = tower 2's projected end token."""
    images = [_image(0), _image(1)]
    cond = conditioner.for_queries(images, [("is red",), ("is blue", "is longer")])
    v1, v2 = conditioner.pseudo_tokens(images)
    prompts = ["a photo of $ that is red", "a photo of $ that is blue and is longer"]
    assert conditioner.prompts_for([("is red",), ("is blue", "is longer")]) == prompts
    with torch.no_grad():
        out1 = conditioner.backbone_1.encode_composed(prompts, v1, return_penultimate=True, pad_id=0)
        out2 = conditioner.backbone_2.encode_composed(prompts, v2, return_penultimate=True, pad_id=0)
    torch.testing.assert_close(cond.prompt_embeds[..., :32], out1.penultimate_hidden_states)
    torch.testing.assert_close(cond.prompt_embeds[..., 32:], out2.penultimate_hidden_states)
    torch.testing.assert_close(cond.pooled_prompt_embeds, out2.text_embeds)


def test_official_padding_is_id_0_after_the_end_token_in_both_towers(conditioner):
    """lan-lw/ComposedImageGen extract_lincir_feat.py tokenizes both SDXL prompts with OpenAI's clip.tokenize
    (pad id 0); the HF ViT-L tokenizer pads with the end id. Slow reference: the HF text model on ids padded
    with 0 by hand, with $ = the word "red"; the tokenizer padding (--tokenizer-padding) differs only after the
    end token, and the pooled vector not at all (causal tower)."""
    import dataclasses

    assert conditioner.pad_id == 0
    tokenizer_padding = dataclasses.replace(conditioner, pad_id=None)
    prompts = ["a photo of $ that is big", "a photo of $"]
    words = [p.replace("$", "red") for p in prompts]
    official = conditioner.encode(prompts, *_red_tokens(conditioner, 2))
    own = tokenizer_padding.encode(prompts, *_red_tokens(conditioner, 2))
    halves = []
    for backbone in (conditioner.backbone_1, conditioner.backbone_2):
        ids = backbone.tokenizer(words, padding="max_length", max_length=backbone.context_length,
                                 return_tensors="pt")["input_ids"]
        end = (ids == backbone.tokenizer.eos_token_id).int().argmax(-1)  # the first end token of each row
        assert backbone.tokenizer.pad_token_id != 0 and int(ids[1, -1]) != 0  # the tokenizer pads otherwise
        padded = ids.masked_fill(torch.arange(ids.shape[1]) > end.unsqueeze(1), 0)
        with torch.no_grad():
            halves.append(backbone.text(input_ids=padded, output_hidden_states=True).hidden_states[-2])
    torch.testing.assert_close(official.prompt_embeds, torch.cat(halves, -1).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(official.pooled_prompt_embeds, own.pooled_prompt_embeds, atol=1e-5, rtol=1e-5)
    # both tiny towers share one tokenizer, so `end` (of the last one) holds for both halves
    for row, last in enumerate(end.tolist()):
        torch.testing.assert_close(official.prompt_embeds[row, : last + 1], own.prompt_embeds[row, : last + 1],
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(official.prompt_embeds[row, last + 1 :], own.prompt_embeds[row, last + 1 :],
                                  atol=1e-3)


def test_tokenizer_padding_flag_reaches_the_conditioner():
    from zscir.cli import build_parser
    from zscir.commands.common import conditioner_pad_id

    parser = build_parser()
    for command in (["generate", "--dataset", "cirr", "--root", "r", "--output-dir", "o"],
                    ["train-generator", "--phi", "p"], ["serve"]):
        assert conditioner_pad_id(parser.parse_args(command)) == 0, command
        assert conditioner_pad_id(parser.parse_args([*command, "--tokenizer-padding"])) is None, command


def _red_tokens(conditioner, n):
    """(v1, v2): each tower's token embedding of "red", n rows."""
    out = []
    for backbone in (conditioner.backbone_1, conditioner.backbone_2):
        red = backbone.tokenizer("red", add_special_tokens=False)["input_ids"]
        assert len(red) == 1
        out.append(backbone.text.text_model.embeddings.token_embedding.weight[red[0]].detach().expand(n, -1))
    return out


def test_conditioning_save_load_roundtrip_and_stems(conditioner, tmp_path):
    from zscir.errors import DataError
    from zscir.generation.conditioning import load_conditioning, query_stem, save_conditioning

    cond = conditioner.for_queries([_image(3)], [("is red",)])
    path = save_conditioning(tmp_path, "dress/12", cond)
    assert path.name == "dress%2F12.safetensors"
    back = load_conditioning(tmp_path, "dress/12")
    torch.testing.assert_close(back.prompt_embeds, cond.prompt_embeds)
    torch.testing.assert_close(back.pooled_prompt_embeds, cond.pooled_prompt_embeds)
    stems = {query_stem(q) for q in ["dress/12", "dress_12", "dress%2F12", "dress 12", "12"]}
    assert len(stems) == 5
    with pytest.raises(DataError, match="no saved conditioning"):
        load_conditioning(tmp_path, "dress/13")


def test_cross_attention_mismatch_names_three_sizes(tiny_backbone, sdxl_dir):
    from diffusers import UNet2DConditionModel

    from zscir.errors import ModelLoadError
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.models.phi import Phi

    phi = Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size).eval()
    same_twice = ComposedConditioner(tiny_backbone, phi, tiny_backbone, phi)  # 32 + 32 = 64
    unet_config = UNet2DConditionModel.load_config(str(sdxl_dir / "unet"))  # cross-attention 80
    with pytest.raises(ModelLoadError) as info:
        same_twice.check_unet(type("C", (), unet_config)())
    message = str(info.value)
    assert "\n" not in message and "80" in message and "32" in message and "64" in message


# ---- generation --------------------------------------------------------------------------------


def test_query_seed_is_a_stable_hash():
    from zscir.generation.cig import query_seed

    expected = int.from_bytes(hashlib.sha256(b"1600:dress/3").digest()[:4], "little") & 0x7FFFFFFF
    assert query_seed(1600, "dress/3") == expected
    assert query_seed(1600, "1") != query_seed(1600, "2")
    assert query_seed(1600, "1", "shared") == query_seed(1600, "2", "shared") == 1600


def test_generate_end_to_end_batch_invariant_and_resumable(pipe, conditioner, split, tmp_path, monkeypatch):
    from zscir.generation import cig

    config = cig.GenerationConfig(steps=2, height=SIZE, width=SIZE, batch_size=2, dark_threshold=-1)
    out = tmp_path / "pseudo"
    calls = []
    real_render = cig.render

    def interrupted(*args, **kwargs):  # dies in the middle of the second batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(cig, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cig.generate_pseudo_targets(pipe, [split], out, config, conditioner, tmp_path / "cond", progress=False)
    done = sorted(p.name for p in out.iterdir())
    assert done == ["1.png", "2.png"]  # the finished batch, and no temp file left behind
    assert sorted(p.name for p in (tmp_path / "cond").iterdir()) == [
        "1.safetensors", "2.safetensors", "dress%2F0.safetensors"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(cig, "render", real_render)

    report = cig.generate_pseudo_targets(pipe, [split], out, config, None, tmp_path / "cond", progress=False)
    assert report.generated == ["dress/0"] and sorted(report.skipped) == ["1", "2"] and not report.failed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in mtimes} == mtimes
    cig.write_manifest(out, report)
    manifest = json.loads((out / cig.MANIFEST).read_text())
    assert manifest["counts"] == {"generated": 1, "skipped": 2, "retried": 0, "failed": 0}
    from PIL import Image

    assert Image.open(out / "dress%2F0.png").size == (SIZE, SIZE)

    # batch size 1 from scratch: every image depends on its own seed only
    alone = tmp_path / "alone"
    config_1 = cig.GenerationConfig(steps=2, height=SIZE, width=SIZE, batch_size=1, dark_threshold=-1)
    cig.generate_pseudo_targets(pipe, [split], alone, config_1, conditioner, progress=False)
    for name in ["1.png", "2.png", "dress%2F0.png"]:
        assert abs(_pixels(alone / name) - _pixels(out / name)).max() <= 1
    assert abs(_pixels(alone / "1.png") - _pixels(alone / "2.png")).max() > 0


def test_dark_image_is_regenerated_with_seed_plus_one(pipe, conditioner, split, tmp_path):
    from zscir.generation import cig

    config = cig.GenerationConfig(steps=2, height=SIZE, width=SIZE, seed_policy="shared")
    cond = conditioner.for_queries([_image(0)], [("is red",)])
    brightness = {s: cig.mean_brightness(cig.render(pipe, cond, [s], config)[0]) for s in range(100, 106)}
    seed = next(s for s in range(100, 105) if brightness[s + 1] > brightness[s])
    one = [type(split)("cirr", "cirr/val", split.images, split.gallery, split.queries[:1])]

    config.seed, config.dark_threshold = seed, brightness[seed]  # the first attempt is "dark" (≤ threshold)
    report = cig.generate_pseudo_targets(pipe, one, tmp_path / "a", config, conditioner, progress=False)
    assert report.retried == {"1": [seed, seed + 1]} and report.generated == ["1"]
    cig.save_image_atomic(cig.render(pipe, cond, [seed + 1], config)[0], tmp_path / "direct.png")
    assert abs(_pixels(tmp_path / "a" / "1.png") - _pixels(tmp_path / "direct.png")).max() <= 1

    config.dark_threshold = 255  # everything is dark: 1 try + 5 retries, then a failure without a file
    report = cig.generate_pseudo_targets(pipe, one, tmp_path / "b", config, conditioner, progress=False)
    assert report.retried == {"1": list(range(seed, seed + 6))} and list(report.failed) == ["1"]
    assert not (tmp_path / "b" / "1.png").exists()


def test_missing_reference_image_is_a_failure_not_a_crash(pipe, conditioner, split, tmp_path):
    from zscir.generation import cig

    split.images["img2"].unlink()
    config = cig.GenerationConfig(steps=2, height=SIZE, width=SIZE, batch_size=4, dark_threshold=-1)
    report = cig.generate_pseudo_targets(pipe, [split], tmp_path / "p", config, conditioner, progress=False)
    assert sorted(report.generated) == ["1", "dress/0"] and list(report.failed) == ["2"]
    assert "img2.png" in report.failed["2"]


def test_unreachable_generator_gives_a_clear_message(tmp_path, monkeypatch):
    from zscir.errors import ModelLoadError
    from zscir.generation.cig import load_generator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_generator("someone/not-a-cached-sdxl")
    with pytest.raises(ModelLoadError, match="cannot load it"):
        load_generator(tmp_path / "no-such-folder")


# ---- fusion ------------------------------------------------------------------------------------


def test_fusion(tiny_backbone, split, tmp_path):
    from zscir.compose import compose_queries
    from zscir.evaluation.fusion import alpha_sweep, evaluate_cig, evaluate_fused, pseudo_target_queries
    from zscir.evaluation.runner import Evaluator
    from zscir.generation.cig import image_path
    from zscir.models.phi import Phi
    from zscir.retrieval.features import FeatureCache

    torch.manual_seed(1)
    phi = Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size).eval()
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    _image(40).save(image_path(pseudo, "1"))
    _image(41).save(image_path(pseudo, "dress/0"))  # query "2" has no pseudo target
    ev = Evaluator(tiny_backbone, split, FeatureCache(tmp_path / "cache", progress=False))
    pq = pseudo_target_queries(ev, phi, pseudo)
    assert pq.has_target.tolist() == [True, False, True] and list(pq.missing) == ["2"]

    plain = ev.query_vectors("phi", phi=phi)
    torch.testing.assert_close(pq.fuse(1.0), plain)
    assert evaluate_fused(ev, pq, 1.0).metrics == ev.evaluate("phi", phi=phi).metrics

    # slow reference from the definition, α = 0.3
    with torch.no_grad():
        ref_emb = tiny_backbone.encode_image([_image(0), _image(2), _image(4)])
        gen_emb = tiny_backbone.encode_image([_image(40), _image(41)])
        caps = [q.captions for q in split.queries]
        f_ref = compose_queries(tiny_backbone, phi(ref_emb), caps)
        f_gen = compose_queries(tiny_backbone, phi(gen_emb), [caps[0], caps[2]])
    expected = f_ref.clone()
    expected[[0, 2]] = F.normalize(0.3 * f_ref[[0, 2]] + 0.7 * f_gen, dim=-1)
    torch.testing.assert_close(pq.fuse(0.3), expected, atol=1e-5, rtol=1e-5)

    # a regenerated image at the same path is re-encoded, not served from the cache
    _image(42).save(image_path(pseudo, "1"))
    again = pseudo_target_queries(ev, phi, pseudo)
    assert (again.generated[0] - pq.generated[0]).abs().max() > 1e-4

    sweep = alpha_sweep([ev], [pq], [0.5, 1.0])
    assert list(sweep) == [0.5, 1.0] and sweep[1.0]["cirr/val"] == ev.evaluate("phi", phi=phi).metrics

    lines = []
    results = evaluate_cig([split], tiny_backbone, phi, ev.cache, {}, pseudo, 0.3, [0.3, 1.0], report=lines.append)
    assert "1 of 3 queries have no pseudo target" in lines[0] and "alpha 0.30" in lines[1]
    torch.testing.assert_close(results["cirr/val"].queries, again.fuse(0.3))


# ---- generator training ------------------------------------------------------------------------


def test_train_generator_caches_once_and_updates_the_unet(sdxl_dir, conditioner, split, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from zscir.compose import PromptTemplate
    from zscir.generation.cig import load_generator
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.training.generator import GeneratorTask, GeneratorTrainConfig, train_generator

    plain = ComposedConditioner(conditioner.backbone_1, conditioner.phi_1, conditioner.backbone_2,
                                conditioner.phi_2, PromptTemplate.named("plain"))
    config = GeneratorTrainConfig(output_dir=str(tmp_path / "run"), generator=str(sdxl_dir), resolution=SIZE,
                                  max_steps=3, batch_size=2, lr=1e-3, cpu=True, report_to="none",
                                  progress=False, checkpoint_every=3)
    builds = []
    real_build = GeneratorTask.build_cache
    monkeypatch.setattr(GeneratorTask, "build_cache", lambda self, vae: builds.append(1) or real_build(self, vae))
    paths = list(split.images.values())[:4]
    result = train_generator(config, plain, paths)
    assert result.steps == 3 and result.last_loss == result.last_loss  # finite
    assert len(builds) == 1

    # the cached conditioning is "a photo of $" with $ = Phi(own image), from the definition
    from safetensors.torch import load_file

    cache = load_file(str(tmp_path / "run" / "generator_cache.safetensors"))
    from zscir.data.images import load_image

    direct = plain.for_queries([load_image(p) for p in paths], [("x",)] * 4)  # template has no {caption}
    torch.testing.assert_close(cache["prompt_embeds"], direct.prompt_embeds)
    assert cache["latent_mean"].shape == (4, 4, SIZE // 2, SIZE // 2)

    before = UNet2DConditionModel.from_pretrained(str(sdxl_dir), subfolder="unet")
    after = load_generator(sdxl_dir, unet=result.final_dir).unet
    delta = max((a - b).abs().max().item() for a, b in zip(after.parameters(), before.parameters()))
    assert delta > 0

    config.max_steps, config.resume = 4, True  # resume: the cache is read, not rebuilt
    train_generator(config, plain, paths)
    assert len(builds) == 1


# ---- CLI ---------------------------------------------------------------------------------------


def test_generate_command_on_a_cirr_layout(tmp_path, tiny_clip_dir, sdxl_dir, second_clip_dir, capsys):
    from zscir.cli import main
    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi

    root = tmp_path / "cirr"
    (root / "dev").mkdir(parents=True)
    table, caps = {}, []
    for i in range(4):
        _image(i).save(root / "dev" / f"im{i}.png")
        table[f"im{i}"] = f"./dev/im{i}.png"
    for pairid, (ref, tgt) in enumerate([("im0", "im1"), ("im2", "im3")]):
        caps.append({"pairid": pairid, "reference": ref, "target_hard": tgt, "target_soft": {tgt: 1.0},
                     "caption": "is red.", "img_set": {"id": pairid, "members": list(table)}})
    (root / "captions").mkdir()
    (root / "image_splits").mkdir()
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(caps))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps(table))
    for name, clip in (("phi1", tiny_clip_dir), ("phi2", second_clip_dir)):
        b = Backbone.load(str(clip), load_vision=False)
        Phi(b.projection_dim, b.hidden_size).save_pretrained(tmp_path / name)
    out = tmp_path / "pseudo"
    argv = ["generate", "--dataset", "cirr", "--root", str(root), "--split", "val", "--out", str(out),
            "--backbone", str(tiny_clip_dir), "--phi", str(tmp_path / "phi1"), "--backbone-2", str(second_clip_dir),
            "--phi-2", str(tmp_path / "phi2"), "--generator", str(sdxl_dir), "--steps", "2", "--size", str(SIZE),
            "--dark-threshold", "-1", "--device", "cpu"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "manifest.json"]
    assert "generated 2" in capsys.readouterr().out
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["skipped"] == 2

    # evaluate with the pseudo targets: α = 1 gives exactly the plain Phi metrics
    common = ["evaluate", "--dataset", "cirr", "--root", str(root), "--backbone", str(tiny_clip_dir), "--phi",
              str(tmp_path / "phi1"), "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out", str(tmp_path / "cig"), "--pseudo-targets", str(out), "--alpha", "1",
                          "--alpha-sweep", "0.5", "1"]) == 0
    assert "alpha 0.50" in capsys.readouterr().out
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("plain", "cig")]
    assert metrics[0] == metrics[1]
    # tower 1 twice: 32 + 32 ≠ 80 → one clear line, exit code 2
    bad = argv[:argv.index("--backbone-2")] + argv[argv.index("--generator"):]
    assert main(bad) == 2
    assert "cross-attention size 80" in capsys.readouterr().err
