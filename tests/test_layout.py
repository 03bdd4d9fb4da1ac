"""The package's architecture holds: layers import downward only, ``import sar`` stays light;
and what the README and docs/package.md say about the layout is true."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sar"
# a layer may import the layers listed for it, never the others
HIGHER_LAYERS = {
    "data": {"train", "experiments", "methods", "plots", "benchmark", "distributed"},
    "metrics": {"train", "experiments", "methods", "plots", "benchmark", "data"},
    "train": {"experiments", "plots", "benchmark"},
    "plots": {"train", "experiments"},
}


def sar_imports(path: Path) -> set[str]:
    """Top-level ``sar`` subpackages a module imports (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [target + [a.name] for a in node.names]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        found |= {name[1] for name in names if len(name) > 1 and name[0] == "sar"}
    return found


@pytest.mark.parametrize("layer", sorted(HIGHER_LAYERS))
def test_layers_never_import_upward(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        upward = sar_imports(path) & HIGHER_LAYERS[layer]
        assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}"


def test_the_layer_check_sees_relative_imports():
    # the check above is only as good as sar_imports: it must resolve `..` and `from . import x`
    assert "train" in sar_imports(PACKAGE / "experiments" / "runs.py")
    assert "distributed" in sar_imports(PACKAGE / "train" / "loop.py")


def test_no_module_is_over_about_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 520}
    assert not long, f"split these modules along their seams: {long}"


def test_import_sar_leaves_heavy_libraries_and_subpackages_unloaded():
    code = ("import sys, sar; heavy = ['matplotlib', 'segmentation_models_pytorch', 'timm',"
            " 'torchvision', 'pandas', 'sar.train', 'sar.plots', 'sar.experiments'];"
            " print(','.join(m for m in heavy if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=PACKAGE.parent).stdout.strip()
    assert loaded == ""


def test_subpackages_load_on_first_use():
    code = "import sar; sar.train.fit; sar.data.load_fashion_mnist; print(sar.methods.METHODS[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent).stdout.strip()
    assert out == "ce"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        import sar

        sar.trian  # noqa: B018


NOTEBOOKS = sorted((PACKAGE.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code_cells(path: Path) -> list[str]:
    import json

    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]


def test_every_notebook_starts_with_the_same_install_cell_then_the_setup_cell():
    assert len(NOTEBOOKS) == 5
    firsts = {path.name: _code_cells(path)[:2] for path in NOTEBOOKS}
    install = {cells[0] for cells in firsts.values()}
    assert len(install) == 1, "the install cell differs between notebooks"
    (cell,) = install
    # the logic lives in scripts/ensure_sar.py (tests/test_ensure_sar.py); the cell reaches for
    # it only where `sar` is missing, so a notebook copied out of the checkout still runs
    assert 'if importlib.util.find_spec("sar") is None:' in cell
    assert cell.rstrip().endswith("%run ../scripts/ensure_sar.py")
    assert (PACKAGE.parent / "scripts" / "ensure_sar.py").is_file()
    for name, (_, setup) in firsts.items():
        assert "setup_notebook(SEED)" in setup, f"{name}: the setup cell is not second"


# ------------------------------------------------ the front page and the docs tell the truth
ROOT = PACKAGE.parent
README = ROOT / "README.md"


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_package_map_names_every_module_of_sar():
    rows = {name.strip("`"): text for name, text in
            markdown_table((ROOT / "docs" / "package.md").read_text(), "| module |")}
    top = {f"sar.{p.stem}" for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    top |= {f"sar.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert set(rows) == top, {"not in the map": top - set(rows), "no such module": set(rows) - top}
    for package in (p.parent for p in PACKAGE.glob("*/__init__.py")):
        modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
        unnamed = {m for m in modules if f"`{m}`" not in rows[f"sar.{package.name}"]}
        assert not unnamed, f"the package map's sar.{package.name} row misses {sorted(unnamed)}"


def _notebook_rows(text: str, header: str) -> list[tuple[str, str, list[str]]]:
    """(file name, title, other cells) of each row of a notebooks table."""
    found = []
    for number, link, *rest in markdown_table(text, header):
        title, target = re.fullmatch(r"\[(.+)\]\((.+)\)", link).groups()
        assert Path(target).name.startswith(f"{number}_"), (number, target)
        found.append((Path(target).name, title, rest))
    return found


def _first_duration(cell: str) -> str:
    return re.search(r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)? (?:s|min)\b", cell).group(0)


def test_the_readme_lists_every_notebook_in_order_with_the_times_notebooks_readme_gives():
    front = _notebook_rows(README.read_text(), "| # | notebook |")
    detail = _notebook_rows((ROOT / "notebooks" / "README.md").read_text(), "| # | notebook |")
    files = [p.name for p in NOTEBOOKS]
    assert [name for name, _, _ in front] == files == [name for name, _, _ in detail]
    for (name, title, (_, times)), (_, detail_title, (_, smoke, full)) in zip(
            front, detail, strict=True):
        assert title == detail_title, name
        # the front page gives the first time of each column: "31 s (smoke 14 s)"
        expected = f"{_first_duration(full)} (smoke {_first_duration(smoke)})"
        assert times == expected, f"{name}: README says {times!r}, notebooks/README {expected!r}"
    for target in re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", README.read_text()):
        assert (ROOT / target).is_file(), target


def test_the_readmes_commands_and_links_name_things_that_exist():
    text = README.read_text()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"\bmake ([\w-]+)", text):
        assert target in targets, f"README runs `make {target}`, which the Makefile lacks"
    for module, arguments in re.findall(r"python -m ([\w.]+)((?: [\w./-]+)*)", text):
        assert importlib.util.find_spec(module) is not None, module
        if module == "sar.experiments":
            from sar.experiments import cli

            action, *rest = arguments.split()
            assert action in (*cli.EXPERIMENTS, "render", "merge", "status"), action
            if action == "render":
                assert rest[0] in (*cli.EXPERIMENTS, *cli.RENDER_ONLY), rest[0]
                documents = rest[rest.index("--into") + 1:] if "--into" in rest else []
                assert all((ROOT / d).is_file() for d in documents), documents
    for target in re.findall(r"\]\((?!https?:)([^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_solution_hides_its_code_and_output_and_is_answered_in_words():
    # a student should try an exercise before seeing its solution: the code and its output are
    # collapsed, and an answer in words follows in a <details> block, after the output it reads
    import json

    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        solutions = [i for i, c in enumerate(cells) if "solution" in c["metadata"].get("tags", [])]
        assert solutions, f"{path.name}: no exercise has a solution cell"
        for i in solutions:
            hidden = cells[i]["metadata"].get("jupyter", {})
            assert hidden.get("source_hidden") and hidden.get("outputs_hidden"), (
                f"{path.name}, cell {i}: a solution must hide its source and its outputs")
            if i + 1 in solutions:
                continue  # a solution may run over several cells; the answer follows the last
            after = cells[i + 1] if i + 1 < len(cells) else {"cell_type": "none", "source": []}
            assert after["cell_type"] == "markdown" and "<details" in "".join(after["source"]), (
                f"{path.name}, cell {i}: the next cell must answer in words in a <details> block")
