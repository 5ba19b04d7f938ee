"""Prompt templates as data (no heavy imports, so the CLI's --help can list them).

`$` is the pseudo word; `{caption}` is the relative caption. Each inversion network kind composes
with its own method's prompt by default (`METHOD_TEMPLATES`): a Pic2Word checkpoint with Pic2Word's,
a SEARLE / LinCIR Phi with theirs. `compose.PromptTemplate` turns a name or a text into a checked template.
"""

from __future__ import annotations

PSEUDO_WORD = "$"

TEMPLATES: dict[str, str] = {
    # SEARLE and LinCIR: miccunifi/SEARLE src/validate.py, navervision/lincir validate.py (f"a photo of $ that {c}")
    "default": "a photo of $ that {caption}",
    "searle": "a photo of $ that {caption}",
    "lincir": "a photo of $ that {caption}",
    # Pic2Word: google-research/composed_image_retrieval src/data.py ("a photo of * , {}"; `*` is its pseudo word)
    "pic2word": "a photo of $ , {caption}",
    # the image prompt of OTI / generator training / RTD's hard negatives
    "plain": "a photo of $",
    "circo-concept": "a photo of $ that {caption}",  # used with the concept prepended to the caption (circo_text)
}

# The template a network kind (`zscir.models.phi.NETWORKS`) composes with when none is asked for.
METHOD_TEMPLATES: dict[str, str] = {"phi": "default", "pic2word": "pic2word"}

# Template SETS: one template drawn per image and step (SEARLE's OTI image loss).
# "palavra": the 24 PALAVRA templates SEARLE's OTI draws from at every step, " $ " in the slot
# (miccunifi/SEARLE src/utils.py get_templates, used by src/oti_inversion.py).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "palavra": tuple(t.replace("{}", PSEUDO_WORD) for t in (
        "This is a photo of a {}", "This photo contains a {}", "A photo of a {}",
        "This is an illustration of a {}", "This illustration contains a {}", "An illustrations of a {}",
        "This is a sketch of a {}", "This sketch contains a {}", "A sketch of a {}",
        "This is a diagram of a {}", "This diagram contains a {}", "A diagram of a {}",
        "A {}", "We see a {}", "{}",
        "We see a {} in this photo", "We see a {} in this image", "We see a {} in this illustration",
        "We see a {} photo", "We see a {} image", "We see a {} illustration",
        "{} photo", "{} image", "{} illustration",
    )),
}


def template_help() -> str:
    """One line for `--template`: the known names and what else is accepted."""
    names = ", ".join(f"{k} ({v!r})" for k, v in TEMPLATES.items() if k != "circo-concept")
    return (f"prompt template: a name ({names}) or a text with $ and {{caption}}; default: the method's own "
            "(Pic2Word checkpoints: pic2word, else default)")
