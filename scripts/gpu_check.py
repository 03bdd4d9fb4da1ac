"""Every check that needs a GPU, as one command that fits a short GPU slot (at most 8 minutes).

    bash scripts/gpu_check.sh                  # on a CUDA machine -> results/gpu/
    bash scripts/gpu_check.sh --cpu-dry-run    # the same steps, tiny, on the CPU (~3 minutes)
                                               #   -> results/gpu_dry_run/ (git-ignored)
    bash scripts/gpu_check.sh --only benchmark notebook     # some steps again (another slot)

Steps, in this order, each in a process of its own with a time limit; a failure is recorded
and the next step runs (details in scripts/gpu_check_steps.py). The dry run proves the script
works and measures nothing, so its steps get only a generous hang guard, not the GPU slot's
limits: a busy CPU makes it slower, never failed.

  env        GPU name, torch / CUDA / cuDNN / NCCL versions, driver
  payload    the carried wheels (.gpu/) and the imports that the other steps need
  tests      the unit tests that take the `device` fixture, on CUDA (pytest -m device)
  amp        fit with SAR in float32, bf16 and fp16 (GradScaler): finite, same gate decisions
  torchrun   DDP over NCCL, one rank per GPU (at most 2): the ranks agree on the SAR state
  benchmark  SAR / plain train-step time and peak memory, smp Unet, FPN, DeepLabV3+ with
             resnet18 and resnet50 at 8x3x512x512, and plain throughput (images/s); then
             the proxies (host syncs, aten ops, extra peak memory) with time and memory
             ratios, eager and under torch.compile while its time limit allows
             (benchmark_proxies.csv)
  configs    each paper-scale config's model, crop and per-GPU batch: ms per step, minutes per
             1k iterations and peak memory (scripts/gpu_check_configs.py)
  notebook   notebook 03 under nbval, its GPU section in full mode, every cell timed

Writes REPORT.md, steps.csv, figures.csv, one CSV per table and logs/<step>.log; prints the
report at the end. Exit status 0 when every step passed (or was skipped for a stated reason).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpu_check_configs import step_configs
from gpu_check_steps import REPO, Plan, StepResult, ddp_worker
from gpu_check_steps import STEPS as CORE_STEPS

# the configs step runs before the notebook, which gets whatever time the others leave
STEPS = {**{name: step for name, step in CORE_STEPS.items() if name != "notebook"},
         "configs": step_configs, "notebook": CORE_STEPS["notebook"]}

GPU_BUDGET_S = 470.0  # the slot's 8 minutes, less the shell's payload install
DRY_RUN_STEP_GUARD_S = 1800.0  # the dry run's per-step limit: catches a hang, not slowness
# the most each step may take (seconds); the last step gets whatever the budget leaves
STEP_CAPS_S = {"env": 60, "payload": 90, "tests": 150, "amp": 120, "torchrun": 150,
               "benchmark": 240, "configs": 90, "notebook": 480}
REPORT_RESERVE_S = 5.0  # kept back for writing the report
MIN_STEP_S = 10.0  # a step is skipped rather than started with less than this


@dataclass
class StepRecord:
    """One step as the report shows it: outcome, wall time and limit (seconds), results."""

    name: str
    status: str
    seconds: float = 0.0
    limit_s: float = 0.0
    result: StepResult = field(default_factory=StepResult)
    log_tail: str = ""


# ------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="every step in a tiny CPU form (gloo, small sizes), ~3 minutes")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), metavar="STEP",
                        help=f"run these steps only (env always runs): {', '.join(STEPS)}")
    parser.add_argument("--out", type=Path, help="output folder (default results/gpu, or"
                        " results/gpu_dry_run with --cpu-dry-run)")
    parser.add_argument("--budget-s", type=float, help="time for all steps (seconds; default"
                        f" {GPU_BUDGET_S:.0f} on a GPU, none in the dry run)")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--limit-s", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default = "gpu_dry_run" if args.cpu_dry_run else "gpu"
    args.out = (args.out or REPO / "results" / default).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(dry_run=args.cpu_dry_run, out=args.out, limit_s=args.limit_s)
    if args.ddp_worker:
        ddp_worker(plan)
        return 0
    if args.step:
        return run_step_here(args.step, plan)
    return orchestrate(args, plan)


# ------------------------------------------------------------------- one step, in-process
def run_step_here(name: str, plan: Plan) -> int:
    """Run one step in this process and leave its result as JSON for the orchestrator."""
    started = time.perf_counter()
    try:
        result = STEPS[name](plan)
    except Exception:  # noqa: BLE001 - the step's failure is the report's business
        traceback.print_exc()
        result = StepResult()
        result.fail(traceback.format_exc(limit=3).strip().splitlines()[-1])
    print(f"[{name}] {result.status} in {time.perf_counter() - started:.1f} s", flush=True)
    result_path(plan, name).write_text(json.dumps(asdict(result), default=str, indent=1))
    return 0 if result.status != "failed" else 1


def result_path(plan: Plan, name: str) -> Path:
    return plan.work / f"step_{name}.json"


# ---------------------------------------------------------------------- the orchestration
def orchestrate(args: argparse.Namespace, plan: Plan) -> int:
    fresh_output(plan)
    budget = args.budget_s or (math.inf if plan.dry_run else GPU_BUDGET_S)
    deadline = time.monotonic() + budget
    names = ["env", *(n for n in STEPS if n != "env" and (not args.only or n in args.only))]
    mode = "CPU dry run" if plan.dry_run else "GPU"
    print(f"[gpu_check] {mode}: {len(names)} steps, {budget_text(budget)} -> {plan.out}",
          flush=True)
    records: list[StepRecord] = []
    for index, name in enumerate(names, 1):
        if records and records[0].status == "failed" and not plan.dry_run:
            records.append(StepRecord(name, "skipped", result=skipped("the env step failed")))
            continue
        print(f"[gpu_check] {index}/{len(names)} {name} ...", flush=True)
        records.append(run_step(name, plan, deadline))
        print(f"[gpu_check] {index}/{len(names)} {name}: {records[-1].status} in"
              f" {records[-1].seconds:.1f} s", flush=True)
    write_outputs(plan, records, budget)
    shutil.rmtree(plan.work, ignore_errors=True)  # scratch; the CSVs and logs hold the results
    print((plan.out / "REPORT.md").read_text(), flush=True)
    return 0 if all(r.status in ("ok", "skipped") for r in records) else 1


def fresh_output(plan: Plan) -> None:
    if plan.out.exists():
        shutil.rmtree(plan.out)
    (plan.out / "logs").mkdir(parents=True)
    plan.work.mkdir()


def skipped(why: str) -> StepResult:
    return StepResult().skip(why)


def step_limit(name: str, plan: Plan, deadline: float) -> float:
    """Seconds the step may run: on a GPU its cap, within what the slot's budget leaves; in
    the dry run a hang guard (within an explicit ``--budget-s`` only)."""
    cap = DRY_RUN_STEP_GUARD_S if plan.dry_run else STEP_CAPS_S[name]
    return min(cap, deadline - time.monotonic() - REPORT_RESERVE_S)


def run_step(name: str, plan: Plan, deadline: float) -> StepRecord:
    """The step in a child process group, killed whole when it outlives its limit."""
    limit = step_limit(name, plan, deadline)
    if limit < MIN_STEP_S:
        return StepRecord(name, "skipped", result=skipped("no time left in the budget"))
    log = plan.out / "logs" / f"{name}.log"
    command = [sys.executable, __file__, "--step", name, "--out", str(plan.out),
               "--limit-s", str(limit), *(["--cpu-dry-run"] if plan.dry_run else [])]
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=step_environment(plan), start_new_session=True)
        timed_out = wait_or_kill(process, limit)
    record = StepRecord(name, "ok", round(time.monotonic() - started, 1), round(limit),
                        log_tail=tail(log))
    return collect_result(record, plan, timed_out)


def step_environment(plan: Plan) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # lets the device tests ask for determinism
    if plan.dry_run:  # tiny CPU work gains nothing from threads, which thrash on a shared CPU
        env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def wait_or_kill(process: subprocess.Popen, limit: float) -> bool:
    """Wait up to ``limit`` seconds; past it, kill the step's whole process group."""
    try:
        process.wait(timeout=limit)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this script started for the step
        process.wait()
        return True


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def collect_result(record: StepRecord, plan: Plan, timed_out: bool) -> StepRecord:
    path = result_path(plan, record.name)
    if path.is_file():
        record.result = StepResult(**json.loads(path.read_text()))
    if timed_out:
        record.result.fail(f"timed out after {record.limit_s:.0f} s (what it finished is kept)")
    elif not path.is_file():
        record.result.fail("the step's process ended without a result (see its log)")
    record.status = record.result.status
    return record


# -------------------------------------------------------------------------------- outputs
def write_outputs(plan: Plan, records: list[StepRecord], budget: float) -> None:
    write_csv(plan.out / "steps.csv", [{"step": r.name, "status": r.status,
                                        "seconds": r.seconds, "limit_s": r.limit_s,
                                        "notes": " | ".join(r.result.notes)} for r in records])
    write_csv(plan.out / "figures.csv", [{"step": r.name, "name": k, "value": v}
                                         for r in records for k, v in r.result.figures.items()])
    for record in records:
        for table, rows in record.result.tables.items():
            write_csv(plan.out / f"{table}.csv", rows)
    (plan.out / "REPORT.md").write_text(render_report(plan, records, budget))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def render_report(plan: Plan, records: list[StepRecord], budget: float) -> str:
    env = records[0].result.figures if records and records[0].name == "env" else {}
    lines = [*report_header(plan, env, records, budget), "", *steps_table(records)]
    for record in records:
        lines += ["", *step_section(record)]
    return "\n".join(lines) + "\n"


def report_header(plan: Plan, env: dict[str, Any], records: list[StepRecord],
                  budget: float) -> list[str]:
    title = ("CPU dry run (tiny sizes on the CPU: proves the script works, measures nothing"
             " about a GPU)" if plan.dry_run else env.get("gpu", "no GPU found"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(r.seconds for r in records)
    stack = (f"torch {env.get('torch', '?')} (CUDA {env.get('cuda (torch build)', '-')},"
             f" cuDNN {env.get('cudnn', '-')}, NCCL {env.get('nccl', '-')}),"
             f" Python {env.get('python', '?')}, driver {env.get('driver', '-')}")
    return [f"# GPU check: {title}", "",
            f"{when}; commit {env.get('git commit', '?')}; {len(records)} steps in"
            f" {total:.0f} s ({budget_text(budget)}); `bash scripts/gpu_check.sh"
            f"{' --cpu-dry-run' if plan.dry_run else ''}`.", "", stack + "."]


def budget_text(budget: float) -> str:
    return "no time budget" if math.isinf(budget) else f"budget {budget:.0f} s"


def steps_table(records: list[StepRecord]) -> list[str]:
    rows = [[r.name, r.status, f"{r.seconds:.1f}", f"{r.limit_s:.0f}",
             (r.result.notes[0] if r.result.notes else "")[:140]] for r in records]
    return markdown_table(["step", "status", "seconds", "limit (s)", "first note"], rows)


def step_section(record: StepRecord) -> list[str]:
    lines = [f"## {record.name}: {record.status} ({record.seconds:.1f} s)", ""]
    lines += [f"- {name}: {format_value(value)}" for name, value in record.result.figures.items()]
    for table, rows in record.result.tables.items():
        shown = [r for r in rows if table != "notebook" or r["section"] != "other"
                 or r["outcome"] != "passed"]
        if shown:
            lines += ["", f"`{table}.csv`" + (" (GPU section and failures)"
                                              if table == "notebook" else "") + ":", ""]
            lines += markdown_table(list(dict.fromkeys(k for r in shown for k in r)),
                                    [[format_value(r.get(k)) for k in dict.fromkeys(
                                        k for r in shown for k in r)] for r in shown])
    lines += ["", *(f"- note: {note}" for note in record.result.notes)]
    if record.status == "failed" and record.log_tail:
        lines += ["", f"Last lines of `logs/{record.name}.log`:", "", "```",
                  record.log_tail, "```"]
    return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
