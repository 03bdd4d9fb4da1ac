"""The package's architecture holds: layers import downward only, ``import sar`` stays light."""

from __future__ import annotations

import ast
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
