"""SEARLE: OTI (loss, determinism, EMA, batching, resumable store), concepts and phrases, Phi distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zscir.data.synthetic.concepts import world_concepts, world_phrases
from zscir.errors import ZscirError
from zscir.oti.concepts import (
    ConceptBank,
    concept_embeddings,
    generate_phrases,
    load_phrases,
    mask_concept,
)
from zscir.oti.optimise import OTIConfig, image_loss, initial_tokens, invert_images, token_embedding_std
from zscir.oti.store import TokenStore, chunk_label, invert_to_store, oti_pseudo_tokens

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spinning on a shared 2-core machine

PHRASES = {
    "circle": ["a photo of a red circle on a white background", "a small blue circle at the top left"],
    "square": ["a small blue square at the top left", "turn the red square into a triangle"],
    "star": ["move the star to the middle", "a large yellow star at the bottom right"],
    "hexagon": ["add a large yellow hexagon at the bottom right"],
    "ball": ["a ball with all colours in the center"],
}


@pytest.fixture()
def bank(tiny_backbone):
    return ConceptBank.build(tiny_backbone, list(PHRASES), PHRASES)


def _embeds(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ---- concepts ---------------------------------------------------------------------------------


def test_mask_concept_whole_words_only():
    assert mask_concept("a photo of a red circle on red", "red circle") == "a photo of a $ on red"
    assert mask_concept("a Red  Circle", "red circle") == "a $"
    assert mask_concept("a category of things", "cat") is None  # no substring hits (LinCIR's str.replace bug)
    assert mask_concept("a ball with all colours", "all") == "a ball with $ colours"
    assert mask_concept("a $ and a cat", "cat") is None  # already holds the pseudo word
    assert mask_concept("a cat for $5", "cat") is None  # any `$` could become a pseudo token
    assert mask_concept("on the dog.", "dog") == "on the $ ."  # "$." would be one non-pseudo token
    assert mask_concept("the dog's bone, (dog)", "dog") == "the $ 's bone, ( $ )"


PUNCTUATED_PHRASES = {
    "dog": ["on the dog.", "the dog's bone", "(dog) running", "a dog, running; fast", "a DOG!"],
    "red car": ["a red car.", "two red cars; one red car"],
}


def test_every_punctuated_phrase_keeps_its_pseudo_token(any_backbone):
    bank = ConceptBank.build(any_backbone, list(PUNCTUATED_PHRASES), PUNCTUATED_PHRASES)
    assert bank.dropped == 0 and [len(m) for m in bank.masked] == [5, 2]
    ids = any_backbone.tokenize([m for group in bank.masked for m in group])
    assert bool((ids == any_backbone.pseudo_token_id).any(dim=1).all())
    assert "0 phrases dropped" in bank.summary()


def test_a_phrase_whose_pseudo_word_is_lost_is_never_used(any_backbone, monkeypatch):
    """Past the context length, or merged by the tokenizer: left out of every phrase loss, and counted."""
    from zscir.oti import concepts

    long = "and " * 40 + "the dog"
    bank = ConceptBank.build(any_backbone, ["dog"], {"dog": ["a dog running", long]})
    assert bank.masked == [["a $ running"]] and bank.dropped == 1
    monkeypatch.setattr(concepts, "mask_spans", lambda text, spans, pseudo_word="$": text.replace("dog", "$."))
    with pytest.raises(ZscirError, match="lost their pseudo word"):
        ConceptBank.build(any_backbone, ["dog"], {"dog": ["a dog running", "on the dog"]})


def test_concept_association_matches_brute_force(tiny_backbone, bank):
    templates = ("a photo of a {}", "a {} in the picture", "a picture of a {}")
    concepts = ["circle", "square", "star", "red circle"]
    fast = concept_embeddings(tiny_backbone, concepts, templates)
    images = _embeds(5, tiny_backbone.projection_dim)
    for c, concept in enumerate(concepts):  # definition: mean of normalised template embeddings, normalised
        rows = [F.normalize(tiny_backbone.encode_text([t.format(concept)])[0], dim=0) for t in templates]
        assert torch.allclose(fast[c], F.normalize(torch.stack(rows).mean(0), dim=0), atol=1e-5)
    from zscir.oti.concepts import top_concepts

    scores, index = top_concepts(images, fast, 2)
    for i in range(5):
        sims = [float(F.cosine_similarity(images[i], fast[c], dim=0)) for c in range(len(concepts))]
        expected = sorted(range(len(concepts)), key=lambda c: -sims[c])[:2]
        assert index[i].tolist() == expected
        assert scores[i].tolist() == pytest.approx([sims[c] for c in expected], abs=1e-5)
    # the bank keeps only concepts with a phrase holding them, and embeds the ORIGINAL phrases
    assert bank.concepts == list(PHRASES)
    assert bank.masked[0] == ["a photo of a red $ on a white background", "a small blue $ at the top left"]
    assert torch.allclose(bank.phrase_embeds[2][1], tiny_backbone.encode_text([PHRASES["star"][1]])[0], atol=1e-6)


def test_phrase_files_and_world_phrases(tmp_path):
    (tmp_path / "p.tsv").write_text("dog\ta dog on the grass\n\ncat\ta cat sleeping\n")
    assert load_phrases(tmp_path / "p.tsv") == {"dog": ["a dog on the grass"], "cat": ["a cat sleeping"]}
    (tmp_path / "p.json").write_text('{"dog": ["a dog running"]}')
    assert load_phrases(tmp_path / "p.json") == {"dog": ["a dog running"]}
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    from zscir.errors import DataError

    with pytest.raises(DataError, match="line 1"):
        load_phrases(tmp_path / "bad.tsv")
    from zscir.data.synthetic import world_texts

    vocab = set(" ".join(world_texts()).split())
    concepts = world_concepts()
    phrases = world_phrases(concepts, 4, seed=1)
    assert phrases == world_phrases(concepts, 4, seed=1)
    for concept in concepts:
        assert phrases[concept]
        for p in phrases[concept]:
            assert mask_concept(p, concept) is not None
            assert set(p.split()) <= vocab


def _tiny_lm():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<eos>", "<unk>", ".", "a", "photo", "of", "that", "is", "red", "circle", "square", "on", "the",
             "grass", "sits", "blue", "big", "small"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    return model, tokenizer


def test_lm_phrases_with_a_tiny_random_gpt2():
    model, tokenizer = _tiny_lm()
    both = generate_phrases(model, tokenizer, ["circle", "red circle"], num_phrases=6, max_length=12,
                            progress=False)
    alone = generate_phrases(model, tokenizer, ["red circle"], num_phrases=6, max_length=12, progress=False)
    assert both["red circle"] == alone["red circle"]  # per-concept seeds: independent of the other concepts
    for concept, phrases in both.items():
        assert phrases, concept
        for p in phrases:
            assert p.startswith(f"a photo of {concept} that")
            assert "." not in p and "<eos>" not in p
            assert mask_concept(p, concept).startswith("a photo of $ that")
    assert any(len(p.split()) > 4 + len("red circle".split()) for p in both["red circle"])  # it did generate


def test_lm_phrase_defaults_are_the_official_script_and_no_bigram_repeats():
    """miccunifi/SEARLE src/gpt_phrases_generation.py: max_length 35, 256 sequences, temperature 0.5,
    no_repeat_ngram_size 2 (top_k unset there: transformers' 50)."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(generate_phrases).parameters.items()}
    assert (defaults["max_length"], defaults["num_phrases"], defaults["temperature"],
            defaults["no_repeat_ngram_size"], defaults["top_k"]) == (35, 256, 0.5, 2, 50)
    model, tokenizer = _tiny_lm()
    phrases = generate_phrases(model, tokenizer, ["circle"], num_phrases=16, max_length=30, progress=False)["circle"]
    assert phrases
    for p in phrases:  # the word-level tokenizer: words are tokens, so no word bigram may repeat
        words = p.split()
        bigrams = list(zip(words, words[1:]))
        assert len(set(bigrams)) == len(bigrams), p


# ---- OTI --------------------------------------------------------------------------------------


def test_oti_lowers_loss_and_is_deterministic(tiny_backbone, bank):
    from PIL import Image

    image = Image.new("RGB", (16, 16), (200, 30, 30))
    embeds = tiny_backbone.encode_image([image])
    config = OTIConfig(steps=60, top_k=3, seed=3)
    result = invert_images(tiny_backbone, embeds, bank, config, names=["img"], progress=False)
    start = initial_tokens(["img"], tiny_backbone.hidden_size, token_embedding_std(tiny_backbone), 3)
    assert float(image_loss(tiny_backbone, embeds, result.tokens)) < float(image_loss(tiny_backbone, embeds, start))
    assert float(result.last_loss) < float(result.first_loss)
    again = invert_images(tiny_backbone, embeds, bank, config, names=["img"], progress=False)
    assert torch.equal(again.tokens, result.tokens)
    other = invert_images(tiny_backbone, embeds, bank, OTIConfig(steps=60, top_k=3, seed=4), names=["img"],
                          progress=False)
    assert not torch.allclose(other.tokens, result.tokens)


def test_ema_token_is_the_output_and_the_saved_token(tiny_backbone, bank, tmp_path):
    embeds = _embeds(2, tiny_backbone.projection_dim)
    config = OTIConfig(steps=12, top_k=2, ema_decay=0.8)
    raw = []
    result = invert_images(tiny_backbone, embeds, bank, config, names=["a", "b"], progress=False,
                           on_step=lambda step, v: raw.append(v))
    ema = initial_tokens(["a", "b"], tiny_backbone.hidden_size, token_embedding_std(tiny_backbone), config.seed)
    for v in raw:  # ema_t = d·ema_{t-1} + (1−d)·v_t, ema_0 = v_0
        ema = 0.8 * ema + 0.2 * v
    assert len(raw) == 12
    assert torch.allclose(result.tokens, ema, atol=1e-6)
    assert torch.equal(result.last, raw[-1])
    assert (result.tokens - result.last).abs().max() > 1e-3
    assert all(p.grad is None for p in tiny_backbone.text.parameters())  # only the tokens were optimised
    store = invert_to_store(tiny_backbone, ["a", "b"], embeds, bank, config, tmp_path / "tok", progress=False)
    assert torch.allclose(store.lookup(["b", "a"]), ema[[1, 0]], atol=1e-6)


def test_batched_oti_equals_one_by_one(tiny_backbone, bank):
    embeds = _embeds(4, tiny_backbone.projection_dim, seed=1)
    names = ["w", "x", "y", "z"]
    config = OTIConfig(steps=15, top_k=3, batch_size=4)
    batched = invert_images(tiny_backbone, embeds, bank, config, names=names, progress=False).tokens
    single = torch.cat([invert_images(tiny_backbone, embeds[i : i + 1], bank, config, names=[n],
                                      progress=False).tokens for i, n in enumerate(names)])
    assert torch.allclose(batched, single, atol=1e-5), (batched - single).abs().max()
    # and a different split of the same images into batches gives the same tokens
    pairs = invert_images(tiny_backbone, embeds, bank, OTIConfig(steps=15, top_k=3, batch_size=3), names=names,
                          progress=False).tokens
    assert torch.allclose(batched, pairs, atol=1e-5)


def test_store_resumes_and_refuses_other_settings(tiny_backbone, bank, tmp_path, monkeypatch):
    import zscir.oti.optimise as oti

    embeds = _embeds(5, tiny_backbone.projection_dim, seed=2)
    names = [f"im{i}" for i in range(5)]
    config = OTIConfig(steps=5, top_k=2, batch_size=2)
    folder = tmp_path / "store"
    store = invert_to_store(tiny_backbone, names, embeds, bank, config, folder, chunk_size=2, progress=False)
    full = store.lookup(names)
    chunks = sorted(folder.glob("tokens-*.safetensors"))
    assert len(chunks) == 3
    chunks[-1].unlink()  # an interrupted run: the last chunk never got written
    seen = []
    real = oti._invert_batch
    monkeypatch.setattr(oti, "_invert_batch", lambda bb, e, n, *a: seen.extend(n) or real(bb, e, n, *a))
    store = invert_to_store(tiny_backbone, names, embeds, bank, config, folder, chunk_size=2, progress=False)
    assert seen == ["im4"]  # only the missing image was redone
    assert torch.allclose(store.lookup(names), full, atol=1e-6)
    got_names, got_embeds, got_tokens = TokenStore(folder).pairs()
    assert sorted(got_names) == names and got_embeds.shape == (5, tiny_backbone.projection_dim)
    assert torch.allclose(got_tokens[got_names.index("im1")], full[1])
    from zscir.errors import ZscirError

    with pytest.raises(ZscirError, match="other settings"):
        invert_to_store(tiny_backbone, names, embeds, bank, OTIConfig(steps=6, top_k=2), folder, progress=False)


def test_chunk_claims_share_a_store_first_come_first_served(tiny_backbone, bank, tmp_path):
    from zscir.oti.store import ChunkClaims

    embeds = _embeds(5, tiny_backbone.projection_dim, seed=3)
    names = [f"im{i}" for i in range(5)]
    config = OTIConfig(steps=4, top_k=2, batch_size=2)
    alone = invert_to_store(tiny_backbone, names, embeds, bank, config, tmp_path / "alone", chunk_size=2,
                            progress=False).lookup(names)
    folder, claims = tmp_path / "shared", ChunkClaims(tmp_path / "claims")
    # another process of the run claimed the middle chunk (im2, im3) and died before writing it
    other = ChunkClaims(tmp_path / "claims")
    assert other.claim(folder, chunk_label(names, 2, 1)) and not other.claim(folder, chunk_label(names, 2, 1))
    store = invert_to_store(tiny_backbone, names, embeds, bank, config, folder, chunk_size=2, progress=False,
                            claims=claims)
    assert store.inverted == 3 and sorted(store.index()) == ["im0", "im1", "im4"]  # its chunk is left alone
    again = invert_to_store(tiny_backbone, names, embeds, bank, config, folder, chunk_size=2, progress=False,
                            claims=claims)
    assert again.inverted == 0  # every chunk is claimed now: nothing is inverted twice
    store = invert_to_store(tiny_backbone, names, embeds, bank, config, folder, chunk_size=2, progress=False)
    assert store.inverted == 2  # without claims the missing chunk is inverted; the result is the one-process run
    torch.testing.assert_close(store.lookup(names), alone, atol=1e-6, rtol=0)
    assert ChunkClaims(tmp_path / "claims-2").claim(folder, chunk_label(names, 2, 1))  # a new run, new claims


def test_oti_pseudo_tokens_for_reference_images(tiny_backbone, bank, tmp_path, monkeypatch):
    from PIL import Image

    from zscir.compose import compose_queries
    from zscir.retrieval.features import FeatureCache

    images = {}
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        images[f"r{i}"] = tmp_path / f"r{i}.png"
        Image.new("RGB", (20, 16), colour).save(images[f"r{i}"])
    cache = FeatureCache(tmp_path / "cache", progress=False)
    config = OTIConfig(steps=4, top_k=2)
    refs = ["r2", "r0", "r2"]
    tokens = oti_pseudo_tokens(tiny_backbone, images, refs, bank, config, folder=tmp_path / "oti", cache=cache,
                               progress=False)
    assert tokens.shape == (3, tiny_backbone.hidden_size) and torch.equal(tokens[0], tokens[2])
    import zscir.oti.optimise as oti

    monkeypatch.setattr(oti, "_invert_batch", lambda *a: pytest.fail("tokens should come from the store"))
    again = oti_pseudo_tokens(tiny_backbone, images, refs, bank, config, folder=tmp_path / "oti", cache=cache,
                              progress=False)
    assert torch.equal(again, tokens)
    queries = compose_queries(tiny_backbone, tokens, [("is green",), ("is blue",), ("is red",)])
    assert queries.shape == (3, tiny_backbone.projection_dim)


def test_searle_oti_as_a_retrieval_method_on_the_world(tiny_backbone, bank, tmp_path, monkeypatch):
    from zscir.data.records import load_benchmark
    from zscir.data.synthetic import WorldSizes, build_world
    from zscir.evaluation.runner import Evaluator
    from zscir.oti.store import oti_reference_tokens
    from zscir.retrieval.features import FeatureCache

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    build_world(tmp_path / "world", sizes=WorldSizes.small())
    split = load_benchmark("cirr", tmp_path / "world" / "cirr", "val")[0]
    cache = FeatureCache(tmp_path / "features", progress=False)
    ev = Evaluator(tiny_backbone, split, cache)
    config = OTIConfig(steps=3, top_k=2)
    tokens = oti_reference_tokens(ev, bank, config, progress=False)
    assert tokens.shape == (len(split.queries), tiny_backbone.hidden_size)
    assert set(ev.evaluate("phi", pseudo_tokens=tokens).metrics) >= {"R@1", "R@5"}
    import zscir.oti.optimise as oti

    # the path-based helper finds the same default store: nothing is inverted again
    monkeypatch.setattr(oti, "_invert_batch", lambda *a: pytest.fail("tokens should come from the store"))
    refs = [q.reference for q in split.queries]
    again = oti_pseudo_tokens(tiny_backbone, split.images, refs, bank, config, cache=cache, progress=False)
    assert torch.equal(again, tokens)


# ---- Phi distillation ---------------------------------------------------------------------------


def test_cross_modal_loss_matches_definition():
    """The cross-modal option (negatives only from the other set); the official NT-Xent default is checked
    against its own slow reference in test_losses.py."""
    from zscir.training.searle import contrastive_loss

    v, t = _embeds(5, 7, seed=3), _embeds(5, 7, seed=4)
    sims = [[float(F.cosine_similarity(v[i], t[j], dim=0)) / 0.25 for j in range(5)] for i in range(5)]
    import math

    rows = [-sims[i][i] + math.log(sum(math.exp(s) for s in sims[i])) for i in range(5)]
    cols = [-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(5))) for j in range(5)]
    expected = 0.5 * (sum(rows) / 5 + sum(cols) / 5)
    assert float(contrastive_loss(v, t, 0.25, kind="cross-modal")) == pytest.approx(expected, rel=1e-5)


def _distill_config(out, steps, resume=False, **extra):
    from zscir.training.searle import SearleConfig

    settings = dict(output_dir=str(out), max_steps=steps, epochs=None, batch_size=4, checkpoint_every=2, top_k=2,
                    resume=resume, report_to="none", progress=False)
    return SearleConfig(**{**settings, **extra})


def test_searle_counts_the_official_epochs_unless_steps_are_asked_for(tmp_path):
    """Default: 100 epochs (miccunifi/SEARLE src/train_phi.py --num-epochs 100); max_steps given alone (file,
    --set or flag) counts steps, also over a recipe's epochs; both given: epochs win (steps derived)."""
    from zscir.training.config import SearleConfig, load_config

    assert SearleConfig().epochs == 100 and load_config(SearleConfig).epochs == 100
    assert SearleConfig().steps_for(1000) == 100 * (1000 // 256)
    assert load_config(SearleConfig, overrides={"max_steps": 5}).epochs is None
    assert load_config(SearleConfig, overrides={"max_steps": 5}, base={"epochs": 3}).epochs is None
    assert load_config(SearleConfig, overrides={"lr": 1e-3}, base={"epochs": 3}).epochs == 3
    assert load_config(SearleConfig, overrides={"max_steps": 5, "epochs": 2}).epochs == 2
    (tmp_path / "c.yaml").write_text("max_steps: 7\n")
    assert load_config(SearleConfig, tmp_path / "c.yaml").epochs is None


def test_distillation_resumes_exactly(tiny_backbone, bank, tmp_path):
    from zscir.training.searle import distill_phi

    embeds = _embeds(12, tiny_backbone.projection_dim, seed=5)
    tokens = _embeds(12, tiny_backbone.hidden_size, seed=6)
    straight = distill_phi(tiny_backbone, embeds, tokens, bank, _distill_config(tmp_path / "a", 4))
    distill_phi(tiny_backbone, embeds, tokens, bank, _distill_config(tmp_path / "b", 2))
    resumed = distill_phi(tiny_backbone, embeds, tokens, bank, _distill_config(tmp_path / "b", 4, resume=True))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    fresh = distill_phi(tiny_backbone, embeds, tokens, bank, _distill_config(tmp_path / "c", 2))
    assert not torch.equal(fresh.layers[0].weight, straight.layers[0].weight)  # the 2 extra steps did something


def test_distillation_learns_validates_and_saves_both_formats(tiny_backbone, bank, tmp_path):
    from zscir.models.phi import load_inversion_network
    from zscir.training.searle import contrastive_loss, distill_phi

    embeds = _embeds(8, tiny_backbone.projection_dim, seed=7)
    tokens = _embeds(8, tiny_backbone.hidden_size, seed=8)
    calls = []

    def validate(phi):  # a toy metric: how well Phi(x) retrieves its own OTI token among the 8
        calls.append(phi.training)
        return {"R@1": float((contrastive_loss(phi(embeds), tokens, 0.25) * -1).exp())}

    config = _distill_config(tmp_path / "run", 40, lr=3e-3, validate_every=20, checkpoint_every=40, dropout=0.0)
    torch.manual_seed(config.seed)
    from zscir.models.phi import Phi

    before = Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size, dropout=0.0).eval()
    phi = distill_phi(tiny_backbone, embeds, tokens, bank, config, validate=validate)
    with torch.no_grad():
        assert float(contrastive_loss(phi(embeds), tokens, 0.25)) < float(contrastive_loss(before(embeds), tokens,
                                                                                               0.25))
    assert calls == [False, False]  # validated at steps 20 and 40, in eval mode
    published = load_inversion_network(tmp_path / "run" / "best" / "phi.pt")
    for (name, a), (_, b) in zip(phi.state_dict().items(), published.state_dict().items()):
        assert torch.equal(a, b), name


def test_distill_from_an_invert_folder(tiny_backbone, bank, tmp_path):
    from zscir.training.searle import distill_from_store

    embeds = _embeds(8, tiny_backbone.projection_dim, seed=10)
    invert_to_store(tiny_backbone, [f"i{k}" for k in range(8)], embeds, bank, OTIConfig(steps=2, top_k=2),
                    tmp_path / "tok", progress=False)
    phi = distill_from_store(tiny_backbone, tmp_path / "tok", bank, _distill_config(tmp_path / "run", 2))
    assert phi(embeds).shape == (8, tiny_backbone.hidden_size)
    assert (tmp_path / "run" / "final" / "phi.pt").is_file()


def test_train_phi_method_searle_through_the_cli(tiny_backbone, tiny_clip_dir, tmp_path):
    import json

    from zscir.cli import main
    from zscir.models.phi import load_inversion_network

    (tmp_path / "concepts.txt").write_text("\n".join(PHRASES) + "\n")
    (tmp_path / "phrases.json").write_text(json.dumps(PHRASES))
    embeds = _embeds(8, tiny_backbone.projection_dim, seed=11)
    invert_to_store(tiny_backbone, [f"i{k}" for k in range(8)], embeds, None, OTIConfig(steps=2, phrase_weight=0),
                    tmp_path / "tok", progress=False)
    code = main(["train-phi", "--method", "searle", "--backbone", str(tiny_clip_dir),
                 "--tokens", str(tmp_path / "tok"),
                 "--concepts", str(tmp_path / "concepts.txt"), "--phrases", str(tmp_path / "phrases.json"),
                 "--top-k", "2", "--max-steps", "2", "--batch-size", "4", "--output-dir", str(tmp_path / "run"),
                 "--report-to", "none", "--no-progress"])
    assert code == 0
    phi = load_inversion_network(tmp_path / "run" / "final")
    assert phi(embeds).shape == (8, tiny_backbone.hidden_size)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["top_k"] == 2 and saved["temperature"] == 0.25 and saved["phrase_weight"] == 0.75
    assert saved["max_steps"] == 2 and saved["lr"] == 1e-4 and "noise_scale" not in saved
    assert json.loads((tmp_path / "tok" / "phrases.json").read_text()) == PHRASES  # kept beside the tokens


def test_open_images_class_list_is_one_flag_away(tmp_path, monkeypatch):
    """`--concepts openimages` reads Open Images V7's class descriptions (LabelName,DisplayName; the file SEARLE
    uses) from the cache; any CSV with a DisplayName column works as a file too."""
    from zscir.oti.concepts import OPENIMAGES_FILE, concepts_path, load_concepts

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path))
    path = concepts_path("openimages")
    assert path == tmp_path / "concepts" / OPENIMAGES_FILE
    path.parent.mkdir(parents=True)
    # the real file's shape: a header, quoted names with commas, apostrophes, non-ASCII
    path.write_text('LabelName,DisplayName\n/m/0c4936,\'Nduja\n/m/0hz5,Aardvark\n/m/02qyzmw,A-line\n'
                    '/m/0dzcqd,Acarajé\n/m/0cw1wr,"Adapter, (Computer)"\n/m/0hz5,Aardvark\n', encoding="utf-8")
    assert load_concepts(path) == ["'Nduja", "Aardvark", "A-line", "Acarajé", "Adapter, (Computer)"]
    assert concepts_path("world") is None and concepts_path("my.txt") == Path("my.txt")
