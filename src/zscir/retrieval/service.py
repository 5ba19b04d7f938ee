"""Search an index folder with a composed query (reference image + modifying text).

One library object serves the CLI (`zscir search`), the web page and its JSON API:

    service = SearchService("my-index", phi="phi-folder", text_encoder=None)
    hits = service.search("ref.jpg", "is red instead", method="phi", k=10)   # list[Hit], best first

The query vector of each method is built by the query builders of composition
(`zscir.compose.METHODS`), so a search ranks exactly like an evaluation would; CIG
pseudo targets are fused with `zscir.compose.fuse_queries`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zscir.compose import METHODS, PromptTemplate, QueryInputs, clean_caption, fuse_queries, pseudo_tokens_of
from zscir.data.images import load_image
from zscir.errors import DataError, ModelLoadError, ZscirError
from zscir.generation.cig import render_with_retries
from zscir.generation.options import GenerationConfig
from zscir.models.backbone import Backbone
from zscir.models.loading import load_query_models
from zscir.recipes import DEFAULT_ALPHA
from zscir.retrieval.index import load_index
from zscir.retrieval.indexer import load_ids, read_manifest

# Closed-class English words: a caption made only of these (or of no word at all) says nothing to search for.
FUNCTION_WORDS = frozenset("""
a an the this that these those it its it's is are was were be been being am do does did done has have had
and or but nor so yet if then than as of in on at to from by with without into onto over under up down out off
for about above below between through again too very just not no yes also only more most less least some any
all each every both either neither such same other own i me my we us our you your he him his she her they them
their what which who whom whose where when why how there here please can could would should will shall may might
must instead make made let get one ones thing things photo picture image same
""".split())
WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)
# Two embeddings this close are the same picture (re-encoding the same pixels differs by float rounding only).
SAME_IMAGE_COSINE = 0.9999

# A CIG generator: (reference image, caption) -> pseudo-target PIL image.
PseudoTargetGenerator = Callable[[object, str], object]


@dataclass
class Hit:
    """One search result.

    Attributes:
        rank: 1-based position.
        path: absolute path of the image file.
        relpath: path relative to the indexed folder (the id table entry).
        row: row of the image in the index.
        score: cosine similarity between the query and the image.
    """

    rank: int
    path: str
    relpath: str
    row: int
    score: float

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class SearchResult:
    """Hits plus what produced them (the page shows the pseudo target when one was generated)."""

    hits: list[Hit]
    method: str
    pseudo_target: object | None = None  # PIL image or None
    excluded: list[int] = field(default_factory=list)  # index rows left out as the reference itself


def check_caption(caption: str | None) -> str:
    """Clean a modifying text and refuse one that carries no content.

    Args:
        caption: the user's text.
    Returns:
        The cleaned caption (`zscir.compose.clean_caption`).
    Raises:
        DataError: empty caption, or no content word (only function words, digits or punctuation).
    """
    if caption is None or not str(caption).strip():
        raise DataError("empty caption: type what should change, e.g. 'is red and has two dogs'")
    cleaned = clean_caption(str(caption), "caption")
    words = [w.lower() for w in WORD_RE.findall(cleaned)]
    if not any(w not in FUNCTION_WORDS for w in words):
        raise DataError(f"caption {caption!r} has no content words (only words like 'the', 'and', 'is'); "
                        "say what should change, e.g. 'is red and has two dogs'")
    return cleaned


def open_reference(image) -> object:
    """A reference given as a path, raw bytes, a file object or a PIL image → an RGB PIL image.

    Raises:
        DataError: nothing given, or not a decodable image (the message names the file when there is one).
    """
    from PIL import Image

    if image is None:
        raise DataError("no reference image: upload or pick one")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    data = image if isinstance(image, (bytes, bytearray)) else image.read()
    if not data:
        raise DataError("the reference image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return opened.convert("RGB")
    except Exception as exc:  # PIL raises many kinds on non-images
        raise DataError(f"the uploaded file is not a readable image ({type(exc).__name__}); "
                        "use a JPEG, PNG or WebP") from exc


class SearchService:
    """Load an index folder and the models needed to query it.

    Args:
        index_dir: a folder written by `zscir index` (`zscir.retrieval.indexer.index_folder`).
        phi: inversion network (path or module) enabling the "phi" method; None disables it.
        text_encoder: a fine-tuned text tower (path: HF folder or RTD .pt) replacing the backbone's.
        backbone: an already loaded `Backbone` (default: load the one named in the manifest).
        generator: optional CIG pseudo-target generator `(reference PIL, caption) -> PIL`.
        alpha: CIG fusion weight of the reference query (METHODS.md §5); None = `zscir.recipes.DEFAULT_ALPHA`
            (an index is no benchmark split: the CIRR val value).
        template: prompt template (name or text) of the phi method; None = the one of the network's method.
        device: where the models run.
    Raises:
        ZscirError: missing index, a backbone whose weights differ from the ones the index was built with,
            a Phi or text tower that does not fit.
    """

    def __init__(self, index_dir: str | os.PathLike, phi=None, text_encoder=None, backbone=None,
                 generator: PseudoTargetGenerator | None = None, alpha: float | None = None,
                 template: str | None = None, device: str = "cpu"):
        self.index_dir = Path(index_dir).expanduser()
        self.manifest = read_manifest(self.index_dir)
        if backbone is None:
            backbone = Backbone.load(self.manifest["backbone"], device=device)
        if backbone.vision_fingerprint() != self.manifest["vision_fingerprint"]:
            raise ModelLoadError(f"backbone {backbone.name!r} is not the one {self.index_dir} was built with "
                                 f"({self.manifest['backbone']!r}, other weights); rebuild it with `zscir index`")
        self.text_encoder_path = str(text_encoder) if isinstance(text_encoder, (str, os.PathLike)) else None
        self.backbone, self.phi = load_query_models(backbone, text_encoder, phi, device)
        self.generator = generator
        self.alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
        self.template = PromptTemplate.for_network(template or None, self.phi)
        self.root = Path(self.manifest["images_root"])
        self.ids = load_ids(self.index_dir, self.manifest)
        self.index = load_index(self.index_dir / self.manifest["snapshot"])
        if self.index.ntotal != len(self.ids):
            raise ZscirError(f"{self.index_dir}: index has {self.index.ntotal} vectors but {len(self.ids)} ids; "
                             "rebuild it with `zscir index`")

    # ---- what is available ------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """Methods this service can run (phi only with an inversion network)."""
        return [name for name, m in METHODS.items() if not m.needs_phi or self.phi is not None]

    def gallery_paths(self, limit: int | None = None) -> list[str]:
        """Absolute paths of indexed images (the first `limit`), e.g. for the page's examples."""
        ids = self.ids if limit is None else self.ids[:limit]
        return [str(self.root / rel) for rel in ids]

    # ---- queries ------------------------------------------------------------------------------------
    def query_vector(self, image, text: str | None, method: str = "phi") -> tuple[torch.Tensor, object | None]:
        """The [1, P] normalised query of a method, and the pseudo-target image if one was generated.

        Args:
            image: reference (path, bytes, file object or PIL image); unused by "text".
            text: modifying text; unused by "image".
            method: "phi", "image", "text" or "sum" (`zscir.compose.METHODS`).
        Raises:
            ZscirError / DataError: unknown or unavailable method, bad image, empty or content-free caption.
        """
        query, pseudo_target, _ = self._query(image, text, method)
        return query, pseudo_target

    def _query(self, image, text, method):
        """(query [1, P], pseudo target or None, raw reference features [1, P] or None for "text")."""
        if method not in METHODS:
            raise ZscirError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        spec = METHODS[method]
        if spec.needs_phi and self.phi is None:
            raise ZscirError(f"method {method!r} needs an inversion network (this service has none; "
                             f"available here: {', '.join(self.methods)})", setting="phi")
        caption = check_caption(text) if spec.uses_text else ""
        needs_image = method != "text"
        reference = open_reference(image) if needs_image else None
        features = (self.backbone.encode_image([reference]) if needs_image
                    else torch.zeros(1, self.backbone.projection_dim))
        inputs = QueryInputs(self.backbone, features, [(caption,)], self.phi, None, self.template)
        query = spec.build(inputs)
        pseudo_target = None
        if self.generator is not None and spec.needs_phi:
            pseudo_target = self.generator(reference, caption)
            if pseudo_target is not None:  # None: every render was dark, keep the reference query (α = 1)
                gen_features = self.backbone.encode_image([pseudo_target])
                tokens = pseudo_tokens_of(self.phi, gen_features, self.backbone.device)
                q_gen = spec.build(QueryInputs(self.backbone, features, [(caption,)], self.phi, tokens,
                                               self.template))
                query = fuse_queries(query, q_gen, self.alpha)
        return query, pseudo_target, (features if needs_image else None)

    def reference_rows(self, reference_features: torch.Tensor) -> set[int]:
        """Rows of the index that hold the reference image itself (cosine ≥ `SAME_IMAGE_COSINE`).

        CIRR's protocol removes the reference from the candidates; an upload of an indexed file, or an
        example picked on the page, is recognised by its embedding (the index stores no file hashes).
        """
        import torch.nn.functional as F

        scores, rows = self.index.search(F.normalize(reference_features, dim=-1), min(8, len(self.ids)))
        return {int(r) for s, r in zip(scores[0].tolist(), rows[0].tolist()) if r >= 0 and s >= SAME_IMAGE_COSINE}

    def run(self, image, text: str | None, method: str = "phi", k: int = 10,
            exclude_reference: bool = False) -> SearchResult:
        """Search and keep the pseudo target (for the page); see `search`."""
        k = int(k)
        if k < 1:
            raise ZscirError(f"k must be at least 1, got {k}")
        query, pseudo_target, reference = self._query(image, text, method)
        excluded = self.reference_rows(reference) if exclude_reference and reference is not None else set()
        scores, rows = self.index.search(query, k + len(excluded))
        hits = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist()):
            if row < 0 or row in excluded:  # -1: an approximate index could not fill every slot
                continue
            if len(hits) == k:
                break
            rel = self.ids[row]
            hits.append(Hit(len(hits) + 1, str(self.root / rel), rel, int(row), float(score)))
        return SearchResult(hits, method, pseudo_target, sorted(excluded))

    def search(self, image, text: str | None, method: str = "phi", k: int = 10,
               exclude_reference: bool = False) -> list[Hit]:
        """Ranked gallery images for a composed query.

        Args:
            image: reference image (path, bytes, file object or PIL image); ignored by "text".
            text: modifying text; ignored by "image".
            method: "phi" (default), "image", "text" or "sum".
            k: number of hits (at most the index size).
            exclude_reference: leave the reference image itself out of the hits (CIRR's protocol).
        Returns:
            Hits, best first.
        """
        return self.run(image, text, method, k, exclude_reference).hits

    def describe(self) -> dict:
        """What is loaded (for the page header and the API's /api/info)."""
        return {"index": str(self.index_dir), "images_root": str(self.root), "count": len(self.ids),
                "backbone": self.manifest["backbone"], "backend": self.manifest["backend"],
                "methods": self.methods, "phi": self.phi is not None,
                "text_encoder": self.text_encoder_path, "generator": self.generator is not None}


def cig_generator(pipe, conditioner, config=None) -> PseudoTargetGenerator:
    """Wrap an SDXL pipeline + composed conditioner as a pseudo-target generator for `SearchService`.

    Args:
        pipe: from `zscir.generation.cig.load_generator`.
        conditioner: a `zscir.generation.conditioning.ComposedConditioner` (checked against the UNet).
        config: `zscir.generation.options.GenerationConfig` (steps, guidance, size, seed, dark retries).
    Returns:
        `generate(reference PIL, caption) -> PIL or None`; None when every retry was dark (the search
        then uses the reference query alone, i.e. α = 1).
    """
    config = config or GenerationConfig()
    conditioner.check_unet(pipe.unet.config)

    def generate(reference, caption: str):
        cond = conditioner.for_queries([reference], [(caption,)])
        image, _ = render_with_retries(pipe, cond, [config.seed], config)[0]
        return image

    return generate


def load_service(index_dir: str | os.PathLike, phi: str | None = None, text_encoder: str | None = None,
                 **options) -> SearchService:
    """`SearchService(...)` with a friendly error when the index folder is missing (CLI and server use it)."""
    index_dir = Path(index_dir).expanduser()
    if not index_dir.exists():
        raise ZscirError(f"index folder {index_dir} does not exist; build it with `zscir index`")
    if phi is not None and not Path(phi).expanduser().exists():
        raise ModelLoadError(f"inversion network {phi}: no such file or folder")
    return SearchService(index_dir, phi=phi, text_encoder=text_encoder, **options)
