"""The GPU check, without a GPU: its dry run end to end, the notebook lifting and the payload check.

``bash scripts/gpu_check.sh --cpu-dry-run`` runs every step of the GPU slot's script in a tiny
CPU form, so a broken step shows here and not in a scarce GPU slot. The payload check needs
no ``.gpu/`` folder: it is tested on fake wheels.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402
import gpu_payload  # noqa: E402  (lives in scripts/)
from gpu_check_steps import NOTEBOOK, Plan, lifted_copy  # noqa: E402

DRY_RUN_OUT = REPO / "results" / "gpu_dry_run"
HANG_GUARD_S = 3600  # the dry run has no time limit to meet; this only stops a hung one
STEPS = ["env", "payload", "tests", "amp", "torchrun", "benchmark", "configs", "notebook"]


def test_cpu_dry_run_runs_every_step_and_writes_the_report() -> None:
    env = {**os.environ, "CI": "true", "PYTHON": sys.executable}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    with (DRY_RUN_OUT / "steps.csv").open() as file:
        steps = list(csv.DictReader(file))
    assert [row["step"] for row in steps] == STEPS
    for row in steps:  # a step may skip only for want of the data (CI without Fashion-MNIST)
        assert row["status"] == "ok" or "Fashion-MNIST not found" in row["notes"], row
    report = (DRY_RUN_OUT / "REPORT.md").read_text()
    assert report.startswith("# GPU check: CPU dry run")
    assert all(f"## {name}: " in report for name in STEPS)


def test_only_the_gpu_run_holds_its_steps_to_the_slot_s_time_limits(tmp_path: Path) -> None:
    # a busy CPU slows the dry run down: its steps must not time out where a GPU step would
    soon = time.monotonic() + 20  # what a 170 s budget left the 7th step of a slow dry run
    dry, gpu = Plan(dry_run=True, out=tmp_path), Plan(dry_run=False, out=tmp_path)
    assert gpu_check.step_limit("configs", gpu, soon) < 20
    assert gpu_check.step_limit("configs", gpu, math.inf) == gpu_check.STEP_CAPS_S["configs"]
    assert gpu_check.step_limit("configs", dry, math.inf) >= 1800
    assert gpu_check.step_limit("configs", dry, soon) < 20  # an explicit --budget-s still holds


# ------------------------------------------------------------------------------ notebook
def code_sources(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_gpu_section_alone_switches_to_full_mode(tmp_path: Path, dry_run: bool) -> None:
    plan = Plan(dry_run=dry_run, out=tmp_path)
    plan.work.mkdir()
    copy, sections = lifted_copy(NOTEBOOK, plan)
    sources = code_sources(copy)
    assert len(sources) == len(sections) == len(code_sources(NOTEBOOK)) + 2 + dry_run
    first, last = sections.index("GPU"), len(sections) - sections[::-1].index("GPU") - 1
    assert sections[first - 1] == sections[last + 1] == "gpu_check"  # enter and leave
    assert ("SMOKE, False" in sources[first - 1]) != dry_run  # full mode on a GPU only
    assert "SMOKE = _gpu_check_smoke" in sources[last + 1]
    assert set(sections[:first - 1] + sections[last + 2:]) == {"other"}
    assert not any("# NBVAL_SKIP" in sources[i] for i in range(first, last + 1))
    forced = [i for i in range(first, last + 1) if sources[i].endswith("GPU = True")]
    assert len(forced) == dry_run  # the dry run runs the section on the CPU


# ------------------------------------------------------------------------------- payload
def fake_wheel(folder: Path, filename: str, requires: list[str]) -> Path:
    name, version = filename.split("-")[:2]
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
    return path


def test_payload_check_finds_wrong_tags_duplicates_and_unmet_requirements(tmp_path) -> None:
    machine = {"torch": None, "numpy": gpu_payload.Version("2.5.2")}
    good = [fake_wheel(tmp_path, "aaa-1.0-py3-none-any.whl", ["numpy>=2", "bbb==2.0",
                                                              "win-only; sys_platform == 'win32'",
                                                              "docs-tool; extra == 'docs'"]),
            fake_wheel(tmp_path, "bbb-2.0-cp312-abi3-manylinux_2_28_x86_64.whl", ["torch>=2"])]
    assert gpu_payload.tag_problems(good) == []
    assert gpu_payload.duplicate_problems(good) == []
    assert gpu_payload.closure_problems(good, machine) == ([], ["bbb needs torch>=2"])

    bad = [fake_wheel(tmp_path, "ccc-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", []),
           fake_wheel(tmp_path, "ddd-1.0-cp312-cp312-macosx_11_0_arm64.whl", []),
           fake_wheel(tmp_path, "aaa-1.1-py3-none-any.whl", ["numpy<2", "missing-pkg"])]
    assert len(gpu_payload.tag_problems(bad)) == 2
    assert gpu_payload.duplicate_problems(good + bad[2:]) == [
        "two versions of aaa: aaa-1.0-py3-none-any.whl and aaa-1.1-py3-none-any.whl"]
    problems, _ = gpu_payload.closure_problems(bad[2:], machine)
    assert [p.split(":")[0].split(",")[0] for p in problems] == ["aaa needs numpy<2",
                                                                  "aaa needs missing-pkg"]


def test_the_pinned_payload_never_carries_what_the_gpu_image_has() -> None:
    pinned = gpu_payload.read_pins(gpu_payload.PINNED_LIST)
    machine = gpu_payload.read_pins(gpu_payload.MACHINE_LIST)
    assert pinned and "torch" in machine and "segmentation-models-pytorch" in pinned
    assert not set(pinned) & set(machine)
    assert all(version is not None for version in pinned.values())


def test_the_configs_step_measures_every_paper_config() -> None:
    with (DRY_RUN_OUT / "configs.csv").open() as file:  # written by the dry run above
        rows = list(csv.DictReader(file))
    configs = sorted(p.stem for p in (REPO / "configs").glob("*.json")
                     if not p.stem.startswith("fashion_scenes"))
    assert sorted(row["config"] for row in rows) == configs
    assert all(float(row["ms_per_step"]) > 0 for row in rows)


def test_the_benchmark_step_records_the_proxies_eager_and_compiled() -> None:
    with (DRY_RUN_OUT / "benchmark_proxies.csv").open() as file:  # written by the dry run above
        rows = list(csv.DictReader(file))
    assert [row["compiled"] for row in rows] == ["", "eager"]  # eager mode, then compiled
    eager, compiled = rows
    assert eager["gate_opened"] == "True" and not eager["error"]
    assert float(eager["sar_ops"]) > float(eager["plain_ops"]) > 0
    assert float(eager["train_ratio"]) > 0 and float(eager["memory_ratio"]) > 0
    # a capture that fails (the wrapper's hook before issue 24) is a row saying why
    assert compiled["error"] or float(compiled["train_ratio"]) > 0
