"""Concepts and concept phrases for SEARLE's regularisers (OTI and Phi distillation, METHODS.md §3).

A concept is a short noun phrase ("dog", "red circle"). Each image is associated with its top-k
concepts by CLIP similarity: a concept's text embedding is the mean of the L2-normalised text
embeddings of the concept written into a set of templates ("a photo of a {}", ...), normalised again;
an image's concepts are the k with the largest cosine to its image embedding.

A phrase about a concept ("a photo of a dog that is running on the beach") is used with the concept
replaced by the pseudo word `$` ("a photo of a $ that is running on the beach"): encoding that with
the pseudo token should give what the original phrase gives. Phrases come from a pluggable source:
- any causal language model through transformers' `generate` (`generate_phrases`);
- a JSON file {concept: [phrases]} or a tab-separated text file "concept<TAB>phrase" (`load_phrases`);
- the synthetic world's grammar (`zscir.data.synthetic.concepts`), so everything runs offline.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.compose import PSEUDO_WORD, mask_spans
from zscir.data.synthetic.concepts import WORLD_TEMPLATES, world_concepts, world_phrases
from zscir.errors import DataError, ZscirError
from zscir.models.backbone import _hub_error
from zscir.models.tokenizer import pseudo_word_counts
from zscir.registry import default_cache_dir
from zscir.utils.hashing import derived_seed
from zscir.utils.io import write_json_atomic

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a {} in the picture",
    "a picture of a {}",
    "an image of a {}",
    "a close-up photo of a {}",
    "a photo of the {}",
)
LM_PROMPT = "a photo of {concept} that"


# ---------------------------------------------------------------------------------------------
# Masking a concept in a phrase


def mask_concept(phrase: str, concept: str) -> str | None:
    """Replace every whole-word occurrence of `concept` in `phrase` by the pseudo word `$`, as a word of its own.

    Matching is case-insensitive and at word boundaries ("cat" is not replaced inside "category").
    Punctuation touching the concept is kept apart from `$` by a space ("on the dog." -> "on the $ ."),
    since the real CLIP BPE merges "$." into one token that is not the pseudo token
    (`compose.mask_spans`; `ConceptBank.build` checks the result against the tokenizer).

    Args:
        phrase: e.g. "a photo of a red circle at the top left".
        concept: e.g. "red circle".
    Returns:
        The masked phrase ("a photo of a $ at the top left"), or None if the concept does not occur
        as whole words or the phrase already contains a `$`.
    """
    if PSEUDO_WORD in phrase:
        return None
    pattern = re.compile(r"(?<![\w$])" + r"\s+".join(map(re.escape, concept.split())) + r"(?![\w$])", re.IGNORECASE)
    spans = [m.span() for m in pattern.finditer(phrase)]
    return mask_spans(phrase, spans) if spans else None


def holds_pseudo_word(backbone, masked: Sequence[str]) -> list[bool]:
    """Per masked text: every `$` written in it is the pseudo token, and one survives truncation.

    A text failing this would give a phrase loss that does not depend on the pseudo token.
    """
    if not masked:
        return []
    full = pseudo_word_counts(backbone.tokenizer, masked)
    within = (backbone.tokenize(masked) == backbone.pseudo_token_id).any(dim=1).tolist()
    return [count == text.split().count(PSEUDO_WORD) and ok for count, text, ok in zip(full, masked, within)]


# ---------------------------------------------------------------------------------------------
# Concept embeddings and association


def concept_embeddings(backbone, concepts: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                       batch_size: int = 256) -> torch.Tensor:
    """Text embedding of each concept: normalize(mean over templates of normalize(text_embeds)).

    Args:
        backbone: a `Backbone` with a text tower.
        concepts: C concept strings.
        templates: T format strings with one `{}` slot.
        batch_size: prompts per forward pass.
    Returns:
        [C, P] float32, L2-normalised rows.
    """
    if not templates or any("{}" not in t for t in templates):
        raise ZscirError(f"concept templates must each contain '{{}}', got {list(templates)}")
    prompts = [t.format(c) for c in concepts for t in templates]  # concept-major: [C*T]
    embeds = F.normalize(backbone.encode_text(prompts, batch_size=batch_size), dim=-1)
    return F.normalize(embeds.view(len(concepts), len(templates), -1).mean(dim=1), dim=-1)


def top_concepts(image_embeds: torch.Tensor, concept_embeds: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k concepts with the largest cosine to each image.

    Args:
        image_embeds: [N, P] image embeddings (normalised here).
        concept_embeds: [C, P] concept embeddings (normalised here).
        k: concepts per image (clipped to C).
    Returns:
        (scores [N, k'], indices [N, k']) sorted by decreasing cosine, k' = min(k, C).
    """
    sims = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(concept_embeds.float(), dim=-1).T
    return sims.topk(min(k, concept_embeds.shape[0]), dim=-1)


# ---------------------------------------------------------------------------------------------
# The bank used by OTI and distillation


@dataclass
class ConceptBank:
    """Concepts with their embeddings and masked phrases, ready for the phrase loss.

    Attributes:
        concepts: C concepts that have at least one usable phrase.
        embeds: [C, P] normalised concept embeddings (for image → concept association).
        masked: per concept, its phrases with the concept replaced by `$`; each holds the pseudo-token
            id once per `$` within the context (checked on the backbone's tokenizer).
        phrase_embeds: per concept, [n_c, P] text embeddings of the ORIGINAL phrases (targets, unnormalised).
        fingerprint: a hash of concepts, phrases and templates (part of OTI's resume key).
        dropped: phrases containing their concept but left out because a `$` is not the pseudo token
            or lies past the context length (never used in a phrase loss).
    """

    concepts: list[str]
    embeds: torch.Tensor
    masked: list[list[str]]
    phrase_embeds: list[torch.Tensor]
    fingerprint: str
    dropped: int = 0

    def summary(self) -> str:
        """One line on the bank: concepts, phrases and how many masked phrases were left out."""
        used = sum(len(m) for m in self.masked)
        return (f"concept bank: {len(self.concepts)} concepts, {used} masked phrases; {self.dropped} phrases "
                "dropped (pseudo word not one token within the context)")

    @classmethod
    def build(cls, backbone, concepts: Sequence[str], phrases: Mapping[str, Sequence[str]],
              templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256) -> ConceptBank:
        """Embed the concepts and the phrases; drop phrases that do not contain their concept.

        Args:
            backbone: a `Backbone` with a text tower.
            concepts: the concept list (duplicates removed, order kept).
            phrases: {concept: [phrases]}; concepts without a usable phrase are left out of the bank.
            templates: concept templates for `concept_embeddings`.
        Returns:
            The ConceptBank.
        Raises:
            ZscirError: no concept has a usable phrase.
        """
        kept, masked, originals = [], [], []
        dropped = 0
        for concept in dict.fromkeys(concepts):
            pairs = [(m, p) for p in phrases.get(concept, ()) if (m := mask_concept(p, concept)) is not None]
            usable = holds_pseudo_word(backbone, [m for m, _ in pairs])
            dropped += len(pairs) - sum(usable)
            pairs = [pair for pair, ok in zip(pairs, usable) if ok]
            if pairs:
                kept.append(concept)
                masked.append([m for m, _ in pairs])
                originals.append([p for _, p in pairs])
        if not kept:
            raise ZscirError(f"none of the {len(concepts)} concepts has a phrase that contains it "
                             f"(e.g. {list(concepts)[:3]}; {dropped} masked phrases lost their pseudo word "
                             "to the tokenizer); check the phrase source")
        flat = [p for group in originals for p in group]
        flat_embeds = backbone.encode_text(flat, batch_size=batch_size)
        sizes = [len(group) for group in originals]
        digest = hashlib.sha256(json.dumps([kept, originals, list(templates)]).encode()).hexdigest()[:16]
        return cls(kept, concept_embeddings(backbone, kept, templates, batch_size), masked,
                   list(flat_embeds.split(sizes)), digest, dropped)

    def __len__(self) -> int:
        return len(self.concepts)

    def top_k(self, image_embeds: torch.Tensor, k: int) -> torch.Tensor:
        """[N, min(k, C)] indices of each image's nearest concepts (see `top_concepts`)."""
        return top_concepts(image_embeds, self.embeds, k)[1]

    def sample(self, candidates: Sequence[torch.Tensor] | torch.Tensor, rngs: Sequence[random.Random]
               ) -> tuple[list[str], torch.Tensor]:
        """Draw one (masked phrase, original-phrase embedding) per row.

        Row i draws a concept uniformly from `candidates[i]`, then one of its phrases uniformly, using
        only `rngs[i]`, so a row's draws do not depend on the other rows of the batch.

        Returns:
            (B masked phrases, [B, P] original-phrase embeddings).
        """
        texts, targets = [], []
        for row, rng in zip(candidates, rngs):
            c = int(row[rng.randrange(len(row))])
            j = rng.randrange(len(self.masked[c]))
            texts.append(self.masked[c][j])
            targets.append(self.phrase_embeds[c][j])
        return texts, torch.stack(targets)


# ---------------------------------------------------------------------------------------------
# Phrase sources


def load_concepts(path: str | Path) -> list[str]:
    """A concept list: a JSON list of strings, a CSV with a `DisplayName` column (Open Images' class
    descriptions, the list SEARLE uses) or a text file with one concept per line (# comments).

    Raises:
        DataError: missing file, malformed JSON, empty list.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: concept file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        concepts = _csv_concepts(path, text)
    elif path.suffix == ".json":
        try:
            concepts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
            raise DataError(f"{path}: expected a JSON list of concept strings")
    else:
        concepts = [line.split("#", 1)[0] for line in text.splitlines()]
    concepts = list(dict.fromkeys(c.strip() for c in concepts if c.strip()))
    if not concepts:
        raise DataError(f"{path}: no concepts")
    return concepts


def load_phrases(path: str | Path) -> dict[str, list[str]]:
    """Phrases per concept from a JSON file {concept: [phrases]} or a text file of "concept<TAB>phrase" lines.

    Raises:
        DataError: missing file, malformed content (naming the line / key).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: phrase file not found")
    text = path.read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object {{concept: [phrases]}}, got {type(data).__name__}")
        for concept, phrases in data.items():
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                raise DataError(f"{path}: key {concept!r}: expected a list of phrase strings")
            out[concept] = [p.strip() for p in phrases if p.strip()]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{path}: line {number}: expected 'concept<TAB>phrase'")
            concept, phrase = (part.strip() for part in line.split("\t", 1))
            if concept and phrase:
                out.setdefault(concept, []).append(phrase)
    if not out:
        raise DataError(f"{path}: no phrases")
    return out


def _first_sentence(text: str) -> str:
    """Cut a generated text at the first sentence end or line break."""
    cut = re.split(r"[.!?\n]", text, maxsplit=1)[0]
    return " ".join(cut.split())


LM_PHRASES_PER_CONCEPT = 256  # miccunifi/SEARLE src/gpt_phrases_generation.py --num-return-sequences 256
WORLD_PHRASES_PER_CONCEPT = 32  # the world grammar's phrases per concept (zscir's; the world has few concepts)


def generate_phrases(model, tokenizer, concepts: Sequence[str], num_phrases: int = LM_PHRASES_PER_CONCEPT,
                     prompt: str = LM_PROMPT, max_length: int = 35, temperature: float = 0.5, top_k: int = 50,
                     no_repeat_ngram_size: int = 2, seed: int = 0, progress: bool = True) -> dict[str, list[str]]:
    """Phrases about each concept sampled from a causal language model (SEARLE used GPT-Neo 2.7B).

    The defaults are the official ones (miccunifi/SEARLE src/gpt_phrases_generation.py argparse defaults:
    sampling, max_length 35 tokens including the prompt, 256 sequences per concept, temperature 0.5,
    no_repeat_ngram_size 2; top_k is not set there, so transformers' default 50 applies). One difference:
    the official script keeps each continuation whole (newlines turned into ". "); zscir cuts it at the
    first sentence end.

    Each concept is generated with its own seed (derived from `seed` and the concept), so its phrases
    do not depend on the order or number of the other concepts.

    Args:
        model: a transformers causal LM (`generate` is used; eval mode).
        tokenizer: its tokenizer.
        concepts: the concepts.
        num_phrases: sampled phrases per concept (duplicates and ones without the concept dropped).
        prompt: the prompt with a `{concept}` slot; the phrase is the prompt plus its continuation.
        max_length: tokens per sequence, prompt included (`generate(max_length=...)`).
        temperature / top_k / no_repeat_ngram_size: sampling settings.
        seed: base seed.
    Returns:
        {concept: [phrases]}, each phrase cut at its first sentence end.
    """
    from tqdm.auto import tqdm

    if "{concept}" not in prompt:
        raise ZscirError(f"phrase prompt {prompt!r} has no '{{concept}}' slot")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    model.eval()
    out: dict[str, list[str]] = {}
    for concept in tqdm(concepts, desc="phrases", unit="concept", disable=not progress or None):
        encoded = tokenizer(prompt.format(concept=concept), return_tensors="pt").to(device)
        torch.manual_seed(derived_seed(seed, concept))
        with torch.no_grad():
            generated = model.generate(**encoded, do_sample=True, max_length=max_length,
                                       num_return_sequences=num_phrases, temperature=temperature, top_k=top_k,
                                       no_repeat_ngram_size=no_repeat_ngram_size, pad_token_id=pad_id)
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        phrases = [_first_sentence(t) for t in texts]
        out[concept] = list(dict.fromkeys(p for p in phrases if mask_concept(p, concept) is not None))
    return out


# ---------------------------------------------------------------------------------------------
# Concept sources by name (the CLI's --concepts / --phrases)

# Open Images V7's class list (LabelName,DisplayName; ~20k classes), the vocabulary SEARLE associates
# real images with. Annotations of Open Images are CC BY 4.0 (Google); zscir does not ship the file.
OPENIMAGES_FILE = "oidv7-class-descriptions.csv"
CONCEPT_SOURCES = ("openimages", "world")


def concepts_path(source: str) -> Path | None:
    """The file a concept source reads: None for 'world' (built in), `<cache>/concepts/oidv7-...csv` for
    'openimages', else the path itself."""
    if source == "world":
        return None
    if source == "openimages":
        return default_cache_dir() / "concepts" / OPENIMAGES_FILE
    return Path(source).expanduser()


def _csv_concepts(path: Path, text: str) -> list[str]:
    """Concepts of a CSV: its `DisplayName` column if it has one (Open Images), else the first column."""
    import csv

    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    if "DisplayName" in header:
        column = header.index("DisplayName")
        return [row[column] for row in rows[1:] if len(row) > column]
    return [row[0] for row in rows if row]


def build_concept_bank(backbone, concepts: str, phrases: str, phrases_per_concept: int | None = None, seed: int = 0,
                       save_to: str | Path | None = None) -> ConceptBank:
    """A ConceptBank from named sources; generated phrases are saved as `save_to` (JSON) and reused.

    Args:
        backbone: the `Backbone` (concepts and phrases are embedded with its text tower).
        concepts: 'world', 'openimages' or a concept file (see `load_concepts`).
        phrases: 'world', 'lm:MODEL' (sampled from a causal LM, folder or hub id) or a phrase file.
        phrases_per_concept / seed: of generated phrases (None: `LM_PHRASES_PER_CONCEPT` from an LM, the official
            256; `WORLD_PHRASES_PER_CONCEPT` from the world grammar).
        save_to: optional JSON path for the phrases (an existing file there is reused, not regenerated).
    Returns:
        A `ConceptBank`.
    """
    world = concepts == "world"
    names = world_concepts() if world else load_concepts(concepts_path(concepts))
    if save_to is not None and Path(save_to).is_file():
        table = load_phrases(save_to)
    elif phrases == "world":
        table = world_phrases(names, phrases_per_concept or WORLD_PHRASES_PER_CONCEPT, seed)
    elif phrases.startswith("lm:"):
        table = phrases_from_lm(phrases[3:], names, phrases_per_concept or LM_PHRASES_PER_CONCEPT, seed,
                                backbone.device)
    else:
        table = load_phrases(phrases)
    if save_to is not None and not Path(save_to).is_file():
        write_json_atomic(save_to, table)
    return ConceptBank.build(backbone, names, table, WORLD_TEMPLATES if world else DEFAULT_TEMPLATES)


def phrases_from_lm(source: str, concepts: Sequence[str], num_phrases: int, seed: int,
                    device: str | torch.device = "cpu") -> dict[str, list[str]]:
    """`generate_phrases` with a causal LM loaded from a folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source).to(device)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from exc
    return generate_phrases(model, tokenizer, concepts, num_phrases, seed=seed)
