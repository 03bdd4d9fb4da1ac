"""The zoo sweep (scripts/zoo_sweep.py) as a slow test: no model may FAIL.

Run with ``pytest -m slow tests/test_zoo.py`` (about 25 minutes on one CPU thread); every other
run skips it. Each library's models are swept as the script sweeps them, and the test lists the
rows that failed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "zoo_sweep.py"


def zoo_sweep():
    spec = importlib.util.spec_from_file_location("zoo_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_sweep"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("library", ["torchvision", "timm", "smp"])
def test_every_zoo_model_trains_with_sar_or_is_refused_clearly(library):
    sweep = zoo_sweep()
    rows = [sweep.sweep_one(library, spec, build) for _, spec, build in sweep.ZOOS[library]()]
    failed = [f"{row.model}: {row.detail}" for row in rows if row.outcome == "FAIL"]
    assert not failed, "\n".join(failed)
    assert sum(row.outcome == "ok" for row in rows) > len(rows) // 2
