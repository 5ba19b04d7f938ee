"""The search page (Gradio Blocks): reference + modification in, a grid of ranked results out.

The results are plain HTML rendered here (not a Gradio gallery): each tile is the image from our own
`/images/{id}` route with its rank, its full name and its similarity underneath, in a CSS grid that
reflows from one column on a phone to many on a desktop. Nothing on the page shows a server path.
"""

from __future__ import annotations

import html
import logging
import os
from urllib.parse import quote

from zscir.errors import ZscirError, require

log = logging.getLogger(__name__)

METHOD_LABELS = {
    "phi": "Phi: compose 'a photo of $ that …' (SEARLE / LinCIR)",
    "sum": "Sum of image and text embeddings",
    "image": "Reference image only",
    "text": "Text only",
}
BAD_UPLOAD_PREFIX = "zscir-bad-upload:"
SCORE_LEGEND = ("Similarity = cosine between the query and the image embedding: 1 = the same direction, "
                "0 = unrelated, below 0 = opposite. Only the order matters; small or untrained models give "
                "low, even negative, values.")
CSS = """
#results .zs-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 12px; }
#results .zs-hit { margin: 0; display: flex; flex-direction: column; min-width: 0; padding: 6px;
  border: 1px solid var(--border-color-primary); border-radius: 8px; background: var(--background-fill-secondary); }
#results .zs-hit img { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: contain; border-radius: 4px;
  background: #fff; }
#results .zs-hit figcaption { margin-top: 6px; font-size: 13px; line-height: 1.35; }
#results .zs-rank { font-weight: 700; margin-right: 6px; }
#results .zs-score { font-variant-numeric: tabular-nums; }
#results .zs-name { display: block; overflow-wrap: anywhere; word-break: break-word; }
#results .zs-legend { font-size: 12px; opacity: 0.8; margin: 0 0 8px 0; }
"""


def image_url(rel: str) -> str:
    """The URL path of an indexed image (the only way the page and the API refer to gallery files)."""
    return "/images/" + quote(rel)


def short_name(value) -> str | None:
    """A name safe to show to strangers: the last component of a path (hub ids stay as they are)."""
    if value is None:
        return None
    text = str(value)
    return os.path.basename(text.rstrip("/")) if os.path.isabs(os.path.expanduser(text)) else text


def results_html(hits) -> str:
    """The result grid: rank, similarity and full name under each image, nothing on top of it."""
    if not hits:
        return ""
    tiles = []
    for hit in hits:
        name, url = html.escape(hit.relpath), html.escape(image_url(hit.relpath))
        tiles.append(
            f'<figure class="zs-hit" data-rank="{hit.rank}" data-id="{name}">'
            f'<a href="{url}" target="_blank" rel="noopener"><img src="{url}" alt="{name}" loading="lazy"></a>'
            f'<figcaption><span class="zs-rank">#{hit.rank}</span>'
            f'<span class="zs-score" title="cosine similarity between query and image">similarity '
            f'{hit.score:.3f}</span><span class="zs-name">{name}</span></figcaption></figure>')
    return f'<p class="zs-legend">{html.escape(SCORE_LEGEND)}</p><div class="zs-grid">{"".join(tiles)}</div>'


def _tolerant(component):
    """Let an undecodable upload reach the handler as a marker (for a clear message) instead of failing
    inside Gradio's preprocessing with a generic error toast. (An instance attribute, not a subclass:
    Gradio writes a .pyi file next to the module of every component subclass.)"""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception as exc:  # PIL's UnidentifiedImageError and friends
            return f"{BAD_UPLOAD_PREFIX}{type(exc).__name__}"

    component.preprocess = preprocess
    return component


def header_markdown(info: dict, notice: str | None = None) -> str:
    """The page header: what is served, by name only (no server paths)."""
    notes = []
    if not info["phi"]:
        notes.append("no Phi configured (start with `--phi PATH` for the composed method)")
    if info["text_encoder"]:
        notes.append(f"fine-tuned text encoder `{short_name(info['text_encoder'])}`")
    if info["generator"]:
        notes.append("CIG pseudo targets: on (Phi method)")
    text = (f"# zscir: composed image search\n**{info['count']}** images · index `{short_name(info['index'])}` · "
            f"backbone `{short_name(info['backbone'])}` · {info['backend']} search")
    if notes:
        text += "  \n" + "; ".join(notes)
    if notice:
        text += f"\n\n> ⚠️ {notice}"
    return text


def build_page(pool, examples: int = 8, k_default: int = 10, notice: str | None = None):
    """The Gradio Blocks of the search page.

    Args:
        pool: a `zscir.web.limits.SearchPool` (the service and the limits).
        examples: gallery images offered as examples.
        k_default: initial number of results.
        notice: a warning shown under the header (e.g. that the models are untrained).
    Returns:
        The `gr.Blocks`.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    gr = require("gradio", "web")
    service = pool.service
    info = service.describe()
    methods = sorted(service.methods, key=lambda m: list(METHOD_LABELS).index(m) if m in METHOD_LABELS else 99)
    default_method = "phi" if "phi" in methods else "sum"

    def handle(image, text, method, k, exclude_reference):
        """(results HTML, status markdown, pseudo target) for the page."""
        if isinstance(image, str) and image.startswith(BAD_UPLOAD_PREFIX):
            return "", (f"⚠️ The uploaded file is not a readable image "
                        f"({image[len(BAD_UPLOAD_PREFIX):]}); use a JPEG, PNG or WebP."), None
        try:
            result = pool.run(image, text, method, int(k), bool(exclude_reference))
        except ZscirError as exc:
            return "", f"⚠️ {exc}", None
        except Exception as exc:  # keep serving; the log has the traceback
            log.exception("search failed")
            return "", f"⚠️ internal error ({type(exc).__name__})", None
        if not result.hits:
            return "", "no results", result.pseudo_target
        status = f"{len(result.hits)} results · method **{method}** · best `{result.hits[0].relpath}`"
        if result.excluded:
            status += " · reference left out"
        return results_html(result.hits), status, result.pseudo_target

    with gr.Blocks(title="zscir search") as page:
        gr.Markdown(header_markdown(info, notice), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                reference = _tolerant(gr.Image(type="filepath", image_mode=None, format="png",
                                               label="Reference image", sources=["upload", "clipboard"],
                                               elem_id="reference", height=260))
                gallery_examples = service.gallery_paths(examples)
                if gallery_examples:
                    gr.Examples([[p] for p in gallery_examples], inputs=[reference],
                                label="…or pick one from the gallery", examples_per_page=examples)
                caption = gr.Textbox(label="Modification", placeholder="e.g. is red and has two circles",
                                     elem_id="caption", lines=1)
                method = gr.Radio([(METHOD_LABELS.get(m, m), m) for m in methods], value=default_method,
                                  label="Method", elem_id="method")
                exclude = gr.Checkbox(value=True, label="Leave the reference image out of the results "
                                      "(CIRR protocol)", elem_id="exclude-reference")
                k = gr.Slider(1, 50, value=k_default, step=1, label="Results (k)", elem_id="k")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                pseudo = gr.Image(label="Pseudo target (CIG)", visible=info["generator"], interactive=False,
                                  elem_id="pseudo-target", height=200)
            with gr.Column(scale=2, min_width=280):
                status = gr.Markdown("Upload or pick a reference image, type the modification, press Search.",
                                     elem_id="status")
                results = gr.HTML(elem_id="results")
        inputs, outputs = [reference, caption, method, k, exclude], [results, status, pseudo]
        workers = pool.limits.workers
        button.click(handle, inputs, outputs, api_name="search_page", concurrency_limit=workers)
        caption.submit(handle, inputs, outputs, api_name=False, concurrency_limit=workers)
    page.queue(max_size=pool.limits.max_pending)
    return page
