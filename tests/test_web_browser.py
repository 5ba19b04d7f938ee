"""End to end in a real headless Chromium: upload a reference, type a caption, search, read the result grid.

Needs the Debian `chromium` package at /usr/bin/chromium (`apt-get install -y chromium`); the Playwright
python package drives it (never `playwright install`). Skipped only when the browser is absent.
The screenshot is saved as artifacts/web_search.png.
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
    from zscir.search.indexer import index_folder
    from zscir.search.service import SearchService
    from zscir.web.app import start_server

    root = tmp_path_factory.mktemp("web")
    gallery = root / "gallery"
    gallery.mkdir()
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse([8 + 2 * i, 8, 56, 56 - 2 * i], fill=colour)
        image.save(gallery / f"{colour}.png")
    (root / "not-an-image.png").write_bytes(b"plain text, not a PNG")
    backbone = Backbone.load(str(tiny_clip_dir))
    index_folder(gallery, backbone, root / "index", progress=False)
    torch.manual_seed(0)
    phi = Phi(tiny_size.projection_dim, tiny_size.text_hidden, 48).eval()
    service = SearchService(root / "index", phi=phi, backbone=backbone)
    running = start_server(service, port=0)
    running.root, running.service = root, service
    yield running
    running.stop()


def _search(page, url, reference: Path | None, caption: str, method_label: str):
    """Upload `reference` (None: keep what is in the reference box), type, pick the method, search, wait."""
    if reference is not None:
        page.goto(url, wait_until="networkidle")
        page.locator("#reference input[type=file]").set_input_files(str(reference))
    page.locator("#caption textarea, #caption input").first.fill(caption)
    page.get_by_label(method_label).check()
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


def _captions(page) -> list[str]:
    return page.locator("#results .caption-label").all_inner_texts()


def test_upload_caption_search_shows_expected_first(browser, server):
    """The 'image' method with a reference that IS a gallery image must rank that image first (score 1)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    reference = server.root / "gallery" / "blue.png"
    status = _search(page, server.url, reference, "make the circle green", "Reference image only")
    assert "8 results" in status and "blue.png" in status
    captions = _captions(page)
    assert len(captions) == 8
    assert captions[0].startswith("1. 1.000") and captions[0].endswith("blue.png")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_search.png"), full_page=True)
    page.close()


def test_phi_grid_equals_library_ranking(browser, server):
    """The page's Phi ranking is the library's (same query builder, same index)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    reference = server.root / "gallery" / "teal.png"
    _search(page, server.url, reference, "turn the red square into a triangle", "Phi: compose")
    expected = server.service.search(reference, "turn the red square into a triangle", "phi", k=8)
    assert _captions(page) == [f"{h.rank}. {h.score:.3f} · {h.relpath}" for h in expected]
    page.close()


def test_bad_inputs_show_a_message_and_the_page_keeps_working(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    status = _search(page, server.url, server.root / "not-an-image.png", "make it green", "Sum of image")
    assert "not a readable image" in status and _captions(page) == []
    status = _search(page, server.url, server.root / "gallery" / "red.png", "   ", "Sum of image")
    assert "empty caption" in status
    status = _search(page, server.url, server.root / "gallery" / "red.png", "the and of", "Sum of image")
    assert "no content words" in status
    status = _search(page, server.url, server.root / "gallery" / "red.png", "make it green", "Reference image only")
    assert "8 results" in status and _captions(page)[0].endswith("red.png")
    page.close()


def test_picking_a_gallery_example_fills_the_reference(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url, wait_until="networkidle")
    page.locator("img[src$='/gold.png']").first.click()  # the examples row (no results yet)
    page.locator("#reference img").first.wait_for(timeout=10_000)
    status = _search(page, server.url, None, "make it green", "Reference image only")
    assert "gold.png" in status
    assert _captions(page)[0].startswith("1. 1.000") and _captions(page)[0].endswith("gold.png")
    page.close()
