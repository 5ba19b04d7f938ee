"""End to end in a real headless Chromium: upload a reference, type a caption, search, read the result grid.

Needs the Debian `chromium` package at /usr/bin/chromium (`apt-get install -y chromium`); the Playwright
python package drives it (never `playwright install`). Skipped only when the browser is absent.
Screenshots are saved in artifacts/ (web_search.png, web_narrow.png, web_reference_kept.png).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
COLOURS = ["red", "green", "blue", "orange", "purple", "teal", "gold", "gray"]
LONG = "a-rather-long-file-name-that-must-be-shown-in-full-under-its-image"


def _name(colour: str) -> str:
    return f"{colour}.png" if colour != "purple" else f"nested/{LONG}-purple.png"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian package `chromium` (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_dir, tiny_size):
    """A running page + API on 127.0.0.1 over 8 drawn circles, tiny CLIP and a tiny random Phi."""
    import torch
    from PIL import Image, ImageDraw

    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi
    from zscir.retrieval.indexer import index_folder
    from zscir.retrieval.service import SearchService
    from zscir.web.app import start_server

    root = tmp_path_factory.mktemp("web")
    gallery = root / "gallery"
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse([8 + 2 * i, 8, 56, 56 - 2 * i], fill=colour)
        (gallery / _name(colour)).parent.mkdir(parents=True, exist_ok=True)
        image.save(gallery / _name(colour))
    (root / "not-an-image.png").write_bytes(b"plain text, not a PNG")
    backbone = Backbone.load(str(tiny_clip_dir))
    index_folder(gallery, backbone, root / "index", progress=False)
    torch.manual_seed(0)
    phi = Phi(tiny_size.projection_dim, tiny_size.text_hidden, 48).eval()
    service = SearchService(root / "index", phi=phi, backbone=backbone)
    running = start_server(service, port=0, notice="these models are untrained: the ranking is arbitrary")
    running.root, running.gallery, running.service = root, gallery, service
    yield running
    running.stop()


def _search(page, url, reference: Path | None, caption: str, method_label: str, keep_reference: bool = False):
    """Upload `reference` (None: keep what is in the reference box), type, pick the method, search, wait."""
    if reference is not None:
        page.goto(url, wait_until="networkidle")
        page.locator("#reference input[type=file]").set_input_files(str(reference))
    page.locator("#caption textarea, #caption input").first.fill(caption)
    page.get_by_label(method_label).check()
    page.locator("#exclude-reference input[type=checkbox]").set_checked(not keep_reference)
    status = page.locator("#status")
    before = status.inner_text()
    page.locator("#search-button").click()
    # done = the status text changed and Gradio's progress tracker inside it is hidden again
    page.wait_for_function(
        """([el, old]) => {
            const tracker = el.querySelector('[data-testid=status-tracker]');
            const busy = tracker !== null && !tracker.classList.contains('hide');
            return !busy && el.innerText !== old;
        }""", arg=[status.element_handle(), before], timeout=30_000)
    return status.inner_text()


def _tiles(page) -> list[dict]:
    """Each result tile as the browser lays it out: rank, score and name texts, image and caption boxes."""
    page.wait_for_function("() => [...document.querySelectorAll('#results .zs-hit img')].every(i => i.complete)")
    return page.evaluate("""() => [...document.querySelectorAll('#results .zs-hit')].map(fig => {
        const img = fig.querySelector('img'), cap = fig.querySelector('figcaption');
        const name = fig.querySelector('.zs-name');
        const box = e => { const r = e.getBoundingClientRect();
                           return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
        return {rank: fig.querySelector('.zs-rank').innerText, score: fig.querySelector('.zs-score').innerText,
                name: name.innerText, id: fig.dataset.id, src: img.getAttribute('src'),
                loaded: img.naturalWidth > 0, img: box(img), cap: box(cap), fig: box(fig),
                nameClipped: name.scrollWidth > name.clientWidth + 1 || name.scrollHeight > name.clientHeight + 1};
    })""")


def _colour_share(element, colour: str) -> float:
    """Share of an element's screenshot pixels that have the colour of a circle (within 40 per channel)."""
    import io

    from PIL import Image, ImageColor

    shot = Image.open(io.BytesIO(element.screenshot())).convert("RGB")
    target = ImageColor.getrgb(colour)
    pixels = list(shot.getdata())
    return sum(all(abs(a - b) <= 40 for a, b in zip(p, target)) for p in pixels) / len(pixels)


def _check_screenshot(page, count: int):
    """On the rendered pixels: each image shows its circle, its caption shows none of it (nothing on top)."""
    for i in range(count):
        tile = page.locator("#results .zs-hit").nth(i)
        colour = next(c for c in COLOURS if tile.get_attribute("data-id") == _name(c))
        if colour == "gray":  # anti-aliased text is gray too
            continue
        assert _colour_share(tile.locator("img"), colour) > 0.05, colour
        assert _colour_share(tile.locator("figcaption"), colour) < 0.005, colour


def _check_tiles(tiles, width):
    for t in tiles:
        assert t["loaded"], t["src"]
        assert t["cap"]["top"] >= t["img"]["bottom"] - 0.5, t  # the caption sits under the image, not on it
        assert t["cap"]["bottom"] <= t["fig"]["bottom"] + 0.5 and not t["nameClipped"], t
        assert t["fig"]["left"] >= 0 and t["fig"]["right"] <= width + 0.5, t  # fully inside the viewport
        assert t["name"] == t["id"] and t["src"].startswith("/images/")


def test_image_only_leaves_the_reference_out_and_captions_read_in_full(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    reference = server.gallery / "blue.png"
    status = _search(page, server.url, reference, "make the circle green", "Reference image only")
    assert "7 results" in status and "reference left out" in status
    tiles = _tiles(page)
    assert len(tiles) == 7 and "blue.png" not in [t["id"] for t in tiles]
    assert [t["rank"] for t in tiles] == [f"#{i}" for i in range(1, 8)]
    expected = server.service.search(reference, None, "image", k=7, exclude_reference=True)
    assert [t["id"] for t in tiles] == [h.relpath for h in expected]
    assert [t["score"] for t in tiles] == [f"similarity {h.score:.3f}" for h in expected]
    assert f"nested/{LONG}-purple.png" in [t["name"] for t in tiles]
    _check_tiles(tiles, 1280)
    _check_screenshot(page, len(tiles))
    legend = page.locator("#results .zs-legend").inner_text()
    assert "cosine" in legend and "1 = the same direction" in legend
    header = page.locator("#header").inner_text()
    assert str(server.root) not in header and "/tmp" not in header and "8 images" in header
    assert "untrained" in header
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_search.png"), full_page=True)

    status = _search(page, server.url, None, "make the circle green", "Reference image only", keep_reference=True)
    tiles = _tiles(page)
    assert "8 results" in status and tiles[0]["id"] == "blue.png" and tiles[0]["score"] == "similarity 1.000"
    page.screenshot(path=str(ARTIFACTS / "web_reference_kept.png"), full_page=True)
    page.close()


def test_a_430px_wide_page_reflows_without_clipping(browser, server):
    page = browser.new_page(viewport={"width": 430, "height": 900})
    _search(page, server.url, server.gallery / "red.png", "make the circle green", "Reference image only")
    tiles = _tiles(page)
    assert len(tiles) == 7
    _check_tiles(tiles, 430)
    _check_screenshot(page, len(tiles))
    assert page.evaluate("document.documentElement.scrollWidth") <= 430
    page.screenshot(path=str(ARTIFACTS / "web_narrow.png"), full_page=True)
    page.close()


def test_phi_grid_equals_library_ranking(browser, server):
    """The page's Phi ranking is the library's (same query builder, same index)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    reference = server.gallery / "teal.png"
    _search(page, server.url, reference, "turn the red square into a triangle", "Phi: compose")
    expected = server.service.search(reference, "turn the red square into a triangle", "phi", k=8,
                                     exclude_reference=True)
    assert [(t["rank"], t["id"], t["score"]) for t in _tiles(page)] == \
        [(f"#{h.rank}", h.relpath, f"similarity {h.score:.3f}") for h in expected]
    page.close()


def test_bad_inputs_show_a_message_and_the_page_keeps_working(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    status = _search(page, server.url, server.root / "not-an-image.png", "make it green", "Sum of image")
    assert "not a readable image" in status and page.locator("#results .zs-hit").count() == 0
    status = _search(page, server.url, server.gallery / "red.png", "   ", "Sum of image")
    assert "empty caption" in status
    status = _search(page, server.url, server.gallery / "red.png", "the and of", "Sum of image")
    assert "no content words" in status
    status = _search(page, server.url, server.gallery / "red.png", "make it green", "Reference image only",
                     keep_reference=True)
    assert "8 results" in status and _tiles(page)[0]["id"] == "red.png"
    page.close()


def test_picking_a_gallery_example_fills_the_reference(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url, wait_until="networkidle")
    page.locator("img[src$='/gold.png']").first.click()  # the examples row (no results yet)
    page.locator("#reference img").first.wait_for(timeout=10_000)
    status = _search(page, server.url, None, "make it green", "Reference image only")
    assert "reference left out" in status and "gold.png" not in [t["id"] for t in _tiles(page)]
    _search(page, server.url, None, "make it green", "Reference image only", keep_reference=True)
    first = _tiles(page)[0]
    assert first["id"] == "gold.png" and first["score"] == "similarity 1.000"
    page.close()
