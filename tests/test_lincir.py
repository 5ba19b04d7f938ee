"""LinCIR: keyword masking at the token level, corpus reading, the loss from its definition, training."""

from __future__ import annotations

import json

import pytest
import torch

from zscir.compose import mask_spans
from zscir.errors import DataError, MissingExtraError
from zscir.models.phi import Phi, load_inversion_network
from zscir.training.keywords import keyword_spans, load_spacy, mask_captions
from zscir.training.phi import LinCIRConfig, LinCIRTask, masked_prompts, read_captions, text_targets, train_lincir


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def test_keyword_spans_are_maximal_runs():
    # "a big red ball with all colours ." by hand: (start, end, pos, space-after)
    tokens = [(0, 1, "DET", True), (2, 5, "ADJ", True), (6, 9, "ADJ", True), (10, 14, "NOUN", True),
              (15, 19, "ADP", True), (20, 23, "DET", True), (24, 31, "NOUN", False), (31, 32, "PUNCT", False)]
    assert keyword_spans(tokens) == [(0, 14), (20, 31)]
    assert mask_spans("a big red ball with all colours.", [(0, 14), (20, 31)]) == "$ with $ ."
    # an in-word hyphen joins a run, a spaced dash does not
    hyphen = [(0, 1, "NOUN", False), (1, 2, "PUNCT", False), (2, 7, "NOUN", True), (8, 9, "PUNCT", True),
              (10, 13, "NOUN", False)]
    assert keyword_spans(hyphen) == [(0, 7), (10, 13)]


def test_masking_never_hits_inside_a_word(nlp):
    masked, spans = mask_captions(["a ball with all colours", "she is calling all players",
                                   "A man in a red T-shirt."], nlp)
    assert masked[0] == "$ with $"  # str.replace("all", "$") would give "a b$ with $ colours"
    assert masked[1].startswith("she is calling ") and "call" in masked[1] and masked[1].endswith("$")
    assert masked[2] == "$ in $ ."
    assert spans == [2, masked[1].split().count("$"), 2]
    for text in masked:
        for word in text.split():
            assert word == "$" or "$" not in word  # `$` only ever stands as a word of its own


PUNCTUATED = ["a dog, running.", "the man's hat", "(red) car", "two cats; one black",
              "a dog, running on the beach.", "a woman's red dress!", "cars: red, blue & green."]


def test_every_mask_survives_punctuation(any_backbone, nlp):
    """On the real CLIP BPE `$,` `$.` `$'s` are tokens that are not the pseudo token; masking avoids them."""
    from zscir.models.tokenizer import pseudo_word_counts

    masked, spans = mask_captions(PUNCTUATED, nlp)
    assert all(n > 0 for n in spans)
    assert pseudo_word_counts(any_backbone.tokenizer, masked) == spans
    corpus = masked_prompts(any_backbone, PUNCTUATED, nlp, None, progress=False)
    assert corpus.kept == list(range(len(PUNCTUATED))) and corpus.dropped == {} and corpus.fallbacks == 0
    assert corpus.prompts == masked
    assert ((corpus.input_ids == any_backbone.pseudo_token_id).sum(dim=1) > 0).all()


def test_unmasked_style_text_loses_the_pseudo_token_on_real_bpe(real_clip_tokenizer):
    """Why the spaces matter: gluing `$` to punctuation (what str.replace gives) breaks the real BPE."""
    from zscir.models.tokenizer import pseudo_word_counts

    assert pseudo_word_counts(real_clip_tokenizer, ["$, running.", "on the $.", "$'s hat", "($) car"]) == [0, 0, 0, 0]
    assert pseudo_word_counts(real_clip_tokenizer, ["$ , running.", "on the $ .", "$ 's hat", "( $ ) car"]) == [1] * 4


def test_captions_that_cannot_be_fixed_are_counted_and_left_out(any_backbone, nlp):
    captions = ["a red circle on a white background", "a shirt for $5 with a red star", "a blue square."]
    corpus = masked_prompts(any_backbone, captions, nlp, None, progress=False)
    assert corpus.kept == [0, 2] and sum(corpus.dropped.values()) == 1
    assert "1 of 3 captions dropped" in corpus.summary() and "$" in corpus.summary()
    assert corpus.input_ids.shape[0] == 2 and len(corpus.prompts) == 2


def test_a_tokenizer_that_merges_the_pseudo_word_is_caught(tiny_backbone, nlp, monkeypatch):
    """The check is the safety net: a tokenizer that still merges `$` drops and counts the caption."""
    from zscir.training import keywords

    monkeypatch.setattr(keywords, "mask_spans", lambda text, spans, pseudo_word="$": keywords_glued(text, spans))
    corpus = masked_prompts(tiny_backbone, ["a red circle", "run fast"], nlp, None, progress=False)
    assert corpus.kept == [1] and corpus.dropped == {"pseudo word merged with punctuation": 1}
    assert corpus.prompts == ["a photo of $"] and corpus.fallbacks == 1


def keywords_glued(text, spans):
    """Masking as the public code does it: `$` glued to following punctuation ("$.")."""
    out, cursor = [], 0
    for start, end in spans:
        out += [text[cursor:start], "$."]
        cursor = end
    return "".join(out + [text[cursor:]])


def test_masked_prompts_fallback_and_cache(any_backbone, nlp, tmp_path):
    long_tail = "and " * 30 + "the red circle"  # the only keywords lie past the context length
    captions = ["a red circle on a white background", "run fast", long_tail]
    corpus = masked_prompts(any_backbone, captions, nlp, tmp_path, progress=False)
    assert corpus.prompts[0] == "$ on $"
    assert corpus.prompts[1] == "a photo of $" and corpus.prompts[2] == "a photo of $"
    assert corpus.fallbacks == 2 and corpus.kept == [0, 1, 2]
    ids = corpus.input_ids
    assert ids.shape == (3, any_backbone.context_length) and ids.dtype == torch.int32
    assert bool((ids == any_backbone.pseudo_token_id).any(dim=1).all())

    class NoPipe:  # same model id, but any parsing would fail: the second call must come from the cache
        meta = nlp.meta

        def pipe(self, *a, **k):
            raise AssertionError("spaCy ran again")

    again = masked_prompts(any_backbone, captions, NoPipe(), tmp_path, progress=False)
    assert again.prompts == corpus.prompts and torch.equal(ids, again.input_ids)


def test_read_captions_counts_and_skips_bad_lines(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("a red circle\n\n   \n" + "a blue square\n" * 20)
    captions, summary = read_captions(text)
    assert len(captions) == 21 and "2 skipped" in summary
    jsonl = tmp_path / "c.jsonl"
    rows = [json.dumps({"text": f"caption {i}"}) for i in range(20)] + ["{not json", json.dumps({"other": 1})]
    jsonl.write_text("\n".join(rows) + "\n")
    captions, summary = read_captions(jsonl, field="text")
    assert captions[3] == "caption 3" and len(captions) == 20 and "2 skipped" in summary
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows[:5] + ["{oops"] * 3) + "\n")
    with pytest.raises(DataError, match="more than 10% bad"):
        read_captions(bad, field="text")
    folder = tmp_path / "hf"
    folder.mkdir()
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match="datasets"):
            read_captions(folder)


def _masked_ids(backbone, nlp, captions):
    corpus = masked_prompts(backbone, captions, nlp, None, progress=False)
    return corpus.prompts, corpus.input_ids


def test_loss_matches_the_definition_and_only_phi_gets_gradients(tiny_backbone, nlp):
    captions = ["a red circle on a white background", "a small blue square at the top left",
                "turn the red square into a triangle"]
    prompts, ids = _masked_ids(tiny_backbone, nlp, captions)
    e = text_targets(tiny_backbone, captions, None, progress=False)
    assert torch.allclose(e, tiny_backbone.text(input_ids=tiny_backbone.tokenize(captions)).text_embeds, atol=1e-5)
    torch.manual_seed(0)
    phi = Phi(tiny_backbone.projection_dim, tiny_backbone.hidden_size, dropout=0.0)
    task = LinCIRTask(tiny_backbone, phi, ids, e)
    torch.manual_seed(11)
    loss = task.loss(phi, task.batch([0, 1, 2], torch.device("cpu")))
    torch.manual_seed(11)
    u = torch.rand(3, 1)
    v = phi(e + u * torch.randn_like(e))
    expected = ((tiny_backbone.encode_composed(prompts, v).text_embeds - e) ** 2).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in phi.parameters())
    assert all(p.grad is None for p in tiny_backbone.text.parameters())


def test_train_lincir_end_to_end(tiny_backbone, nlp, tmp_path):
    captions = ["a red circle on a white background", "a small blue square at the top left",
                "a ball with all colours in the center", "add a large yellow hexagon at the bottom right",
                "a green triangle", "a black star on a red background"] * 2
    text_before = {k: v.clone() for k, v in tiny_backbone.text.state_dict().items()}
    calls = []

    def validate(phi):
        calls.append(phi.training)
        with torch.no_grad():
            return {"R@1": -float(phi.layers[0].weight.norm())}

    config = LinCIRConfig(max_steps=4, batch_size=4, validate_every=2, checkpoint_every=2, cpu=True,
                          report_to="none", progress=False, lr=1e-3)
    phi = train_lincir(tiny_backbone, captions, config, tmp_path / "run", validate=validate, nlp=nlp)
    assert calls == [False, False]  # validated at steps 2 and 4, in eval mode
    assert all(torch.equal(v, tiny_backbone.text.state_dict()[k]) for k, v in text_before.items())
    published = load_inversion_network(tmp_path / "run" / "best" / "phi.pt")
    ours = load_inversion_network(tmp_path / "run" / "best")
    assert all(torch.equal(a, b) for a, b in zip(published.state_dict().values(), ours.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(phi.state_dict().values(), ours.state_dict().values()))
    assert not phi.training and phi.config["dropout"] == 0.5
    # the cache holds the masked corpus and the targets: a resumed run does not redo them
    assert list((tmp_path / "run" / "cache" / "lincir-masked").glob("*.json"))
    assert list((tmp_path / "run" / "cache" / "lincir-targets").glob("*.safetensors"))
    loss_file = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())
    assert loss_file["step"] == 4 and loss_file["loss"] == loss_file["loss"]  # finite, not NaN
    # the model card says what this run was: backbone, recipe, data and the best step's metric
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    best = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert "LinCIR" in card and "12 captions (text only)" in card and "| lr | 0.001 |" in card
    assert f"| R@1 | {best['R@1']} |" in card and "library_name: zscir" in card
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["kind"] == "phi"
