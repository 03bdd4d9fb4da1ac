"""Sphinx configuration of the book: ``make book`` (the ``docs`` extra).

The README is the landing page; then the notebooks with their stored outputs (never
executed), the pages under ``docs/`` and the API reference generated from the docstrings.
It builds offline: no intersphinx, and the theme ships its assets in its wheel (only MathJax,
which typesets the notebooks' equations, loads from its CDN when a page is read). The source
folder is the repository's root (so the README's and the notebooks' relative links resolve as
they do on GitHub), this folder holds the configuration: ``sphinx-build -c docs . OUT``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout's sar, not an installed copy

import sar  # noqa: E402

# autosummary's recursive walk imports every submodule, and importing a __main__ module runs
# its command: the walk meets empty stand-ins instead (their names are private, so no page)
for script in (ROOT / "sar").rglob("__main__.py"):
    name = ".".join(script.relative_to(ROOT).with_suffix("").parts)
    sys.modules[name] = types.ModuleType(name)

project = "sar: Semantic Anchor Regularization"
author = "the sar contributors"
release = version = sar.__version__

root_doc = "README"
NOTEBOOKS = sorted(p.relative_to(ROOT).with_suffix("").as_posix()
                   for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# the pages under docs/ in reading order; any other page there follows them
FIRST_PAGES = ["results", "package", "training_at_scale", "gpu_check", "cost", "failures",
               "setup", "api"]
PAGES = [f"docs/{name}" for name in FIRST_PAGES] + sorted(
    f"docs/{p.stem}" for p in (ROOT / "docs").glob("*.md") if p.stem not in FIRST_PAGES)

include_patterns = ["README.md", "docs/*.md", "docs/api/*.rst", "notebooks/*.md",
                    "notebooks/[0-9][0-9]_*.ipynb"]
exclude_patterns = [".venv", ".git", ".gpu", "data", "_build", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]
html_additional_pages = {"index": "redirect.html"}  # index.html opens the README

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"]
nb_execution_mode = "off"  # the stored outputs are the book's content: nothing is re-run
myst_heading_anchors = 4  # GitHub's #anchors on headings, which the pages link to
myst_enable_extensions = ["dollarmath"]

autosummary_generate = True
# a package's page documents what it defines; what it re-exports is documented where defined
autodoc_default_options = {"members": True, "ignore-module-all": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shapes", "params_style"), ("Shapes and dtypes", "params_style")]

html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {"show_toc_level": 2}


def _book_toc(_app, docname: str, source: list[str]) -> None:
    """The README holds no toctree (GitHub would show the directive as code): the book's
    table of contents is appended to it as it is read."""
    if docname != root_doc:
        return
    sections = [("Notebooks", ["notebooks/README", *NOTEBOOKS]),
                ("Results and reference", [*PAGES, "notebooks/CONTRIBUTING"])]
    for caption, pages in sections:
        entries = "\n".join(f"/{page}" for page in pages)
        source[0] += f"\n\n```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{entries}\n```\n"


def setup(app) -> None:
    app.connect("source-read", _book_toc)
