"""The book as a reader sees it: built from the committed notebooks without running them, every
stored figure an image on its page, every internal link resolving, and two pages opened in a
real headless browser (Chromium from the distribution's packages).

The build needs the ``docs`` extra, the browser checks ``chromium`` and ``chromium-driver``
(``scripts/setup.sh`` installs all three). Where they are missing the tests skip, except in CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BROWSED_NOTEBOOK = "03_sar_on_smp"  # the one whose figures the book was made for
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                  "--hide-scrollbars")


def require(present: object, what: str) -> None:
    """Skip without ``what``, or fail in CI, where every check must run."""
    if not present:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(what)


# ------------------------------------------------------------------------------ the build
@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """The book built into a temporary folder, as ``make book`` builds it."""
    require(all(importlib.util.find_spec(m) for m in ("sphinx", "myst_nb", "sphinx_book_theme")),
            "the book needs the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("book")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-c", "docs",
                            ".", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, f"the book has warnings or errors:\n{build.stderr[-6000:]}"
    return out


class Page(HTMLParser):
    """What a page links to (``href``/``src`` of a, link, img, script) and its element ids."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (tag, target)
        self.ids: set[str] = set()
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.ids |= {value for key in ("id", "name") if (value := attributes.get(key))}
        key = {"a": "href", "link": "href", "img": "src", "script": "src"}.get(tag)
        if key and attributes.get(key):
            self.links.append((tag, attributes[key]))


def pages(book: Path) -> list[Path]:
    return sorted(p for p in book.rglob("*.html") if not p.relative_to(book).parts[0]
                  .startswith(("_static", "_sources")))


def stored_figures(notebook: Path) -> list[bytes]:
    """The PNG outputs stored in ``notebook``, in order."""
    cells = json.loads(notebook.read_text())["cells"]
    return [base64.b64decode(output["data"]["image/png"]) for cell in cells
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def test_the_book_has_the_front_page_every_notebook_and_every_docs_page(book):
    built = {p.relative_to(book).as_posix() for p in pages(book)}
    expected = {"index.html", "README.html", "notebooks/README.html", "docs/api.html"}
    expected |= {f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS}
    expected |= {f"docs/{md.stem}.html" for md in (ROOT / "docs").glob("*.md")}
    assert expected <= built, sorted(expected - built)
    api = {name for name in built if name.startswith("docs/api/")}
    assert {"docs/api/sar.regularizer.html", "docs/api/sar.train.loop.html"} <= api
    assert not {name for name in api if "__main__" in name}


def test_the_api_reference_is_generated_from_the_docstrings(book):
    page = (book / "docs" / "api" / "sar.regularizer.html").read_text()
    assert 'id="sar.regularizer.SemanticAnchorRegularizer"' in page
    # Google-style sections become fields (napoleon), not literal "Args:" text
    assert "Args:" not in page and "Parameters" in page


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stored_figure_is_an_image_on_its_notebook_page(book, notebook):
    figures = stored_figures(notebook)
    page_path = book / "notebooks" / f"{notebook.stem}.html"
    images = [target for tag, target in Page(page_path).links if tag == "img"]
    files = [page_path.parent / unquote(urlsplit(src).path) for src in images]
    missing = [str(f.relative_to(book)) for f in files if not f.is_file()]
    assert not missing, f"{notebook.name}: images missing from the book: {missing}"
    shown = Counter(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    stored = Counter(hashlib.sha256(png).hexdigest() for png in figures)
    assert not stored - shown, (f"{notebook.name}: {sum((stored - shown).values())} of its"
                                f" {len(figures)} stored figures are not on its page")


def test_every_internal_link_and_anchor_resolves(book):
    parsed = {path: Page(path) for path in pages(book)}
    broken = []
    for path, page in parsed.items():
        for tag, target in page.links:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or target.startswith(("mailto:", "javascript:")):
                assert parts.scheme != "file", f"{path.name} links to a local file: {target}"
                continue
            destination = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if destination.is_dir():
                destination = destination / "index.html"
            if not destination.is_file():
                broken.append(f"{path.relative_to(book)}: {tag} {target}")
            elif parts.fragment and destination.suffix == ".html":
                ids = (parsed.get(destination) or Page(destination)).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(book)}: {tag} {target} (no such anchor)")
    assert not broken, "\n".join(broken[:40])


def test_the_book_loads_no_theme_or_font_from_the_network(book):
    # the one remote script is MathJax, which typesets the notebooks' equations when online
    remote = {target for path in pages(book) for tag, target in Page(path).links
              if tag in ("link", "script") and urlsplit(target).scheme in ("http", "https")}
    assert {urlsplit(url).netloc for url in remote} <= {"cdn.jsdelivr.net"}, remote
    assert all("mathjax" in url for url in remote), remote


# ---------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through the distribution's chromedriver."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    require(chromium and driver_path, "the browser checks need Chromium and its driver:"
            " apt-get install chromium chromium-driver (scripts/setup.sh does)")
    require(importlib.util.find_spec("selenium"), "selenium comes with the docs extra")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(browser, url: str, lands_on: str) -> None:
    """Open ``url`` and wait until the browser has loaded the page whose address ends with
    ``lands_on`` (a redirect takes a second page load)."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(lands_on)
                                     and b.execute_script("return document.readyState")
                                     == "complete")


def screenshot(png: bytes, path: Path) -> np.ndarray:
    """Keep a screenshot beside the book (to look at) and return its grey levels."""
    path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def test_the_landing_page_opens_on_the_front_page_in_a_browser(book, browser):
    open_page(browser, (book / "index.html").as_uri(), "/README.html")  # index.html forwards
    title = browser.find_element("css selector", "article h1").text
    assert title.startswith("sar: Semantic Anchor Regularization")
    figures = browser.find_elements("css selector", "article img")
    assert figures, "the front page shows no figure"
    # every figure decoded: a broken src leaves naturalWidth at 0
    assert all(browser.execute_script("return arguments[0].naturalWidth", f) > 0
               for f in figures)
    links = {a.get_attribute("href") for a in browser.find_elements("css selector", "nav a")}
    for notebook in NOTEBOOKS:
        assert any(h and h.endswith(f"/notebooks/{notebook.stem}.html") for h in links), notebook
    grey = screenshot(browser.get_screenshot_as_png(), book / "screenshot_landing.png")
    assert grey.std() > 20, "the landing page renders blank"


def test_a_notebook_page_shows_its_first_figure_in_a_browser(book, browser):
    notebook = ROOT / "notebooks" / f"{BROWSED_NOTEBOOK}.ipynb"
    figures = stored_figures(notebook)
    page = f"/notebooks/{notebook.stem}.html"
    open_page(browser, (book / page.lstrip("/")).as_uri(), page)
    shown = browser.find_elements("css selector", "article .cell_output img")
    assert len(shown) == len(figures)
    first = shown[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", first)
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                  first) > 0
    width, height = first.size["width"], first.size["height"]
    assert width > 300 and height > 100, (width, height)
    screenshot(browser.get_screenshot_as_png(), book / "screenshot_notebook.png")
    seen = screenshot(first.screenshot_as_png, book / "screenshot_first_figure.png")
    assert seen.std() > 20, "the first figure renders blank"

    def difference(png: bytes) -> float:  # mean absolute grey-level difference at seen's size
        stored = Image.open(io.BytesIO(png)).convert("L").resize(seen.shape[::-1])
        return float(np.abs(np.asarray(stored, dtype=float) - seen).mean())

    # what the browser shows is the notebook's first figure, not another one
    assert difference(figures[0]) < 12
    assert difference(figures[0]) < min(difference(other) for other in figures[1:]) / 2
