"""sar.plots.loss_dict: the loss-dict panels and their table, on a synthetic fit history."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from sar.metrics import loss_dict_events  # noqa: E402
from sar.plots.loss_dict import plot_gate, plot_loss_dict, plot_runs  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def history(gate: int, steps: int = 12, back: int | None = None) -> pd.DataFrame:
    step = np.arange(steps)
    anchor_ce = np.where(step > gate, 0.0, 1.0 / (step + 1))
    if back is not None:
        anchor_ce[back] = 0.1
    return pd.DataFrame({"step": step, "task_loss": 2.0 - 0.1 * step, "anchor_ce": anchor_ce,
                         "pull": np.where(step >= gate, 0.15, 0.0),
                         "gate_opened": (step >= gate).astype(float),
                         "min_anchor_prob": np.minimum(0.1 * step, 0.95)})


def test_plot_loss_dict_panels_and_legends():
    fig = plot_loss_dict({"seed 0": history(5), "seed 1": history(5)}, 0.8, 0.9, title="runs")
    ces, pull, gate = fig.axes
    assert fig._suptitle.get_text() == "runs"
    assert [ax.get_title() for ax in fig.axes] == ["Task CE and anchor CE", "Pull",
                                                    "Gate: lowest anchor probability"]
    assert ces.get_ylabel() == "cross-entropy (nats)" and gate.get_xlabel() == "step"
    assert len(ces.get_lines()) == 2 * 2 + 1  # two columns x two runs, one gate line
    labels = [t.get_text() for t in ces.get_legend().get_texts()]
    assert labels == ["task CE", "anchor CE", "seed 0", "seed 1", "gate opens (step 5)"]
    assert ces.get_legend().get_lines()[-1].get_linestyle() == "-."  # a shared step: dash-dot
    gate_labels = [t.get_text() for t in gate.get_legend().get_texts()]
    assert "update_conf = 0.8" in gate_labels and gate_labels[-1].startswith("filter_conf = 0.9")
    assert len(gate.get_lines()) == 2 + 1 + 2  # two runs, the gate, two thresholds


def test_gate_lines_name_their_runs_when_steps_differ():
    ax = plot_gate({"wrapper": history(3), "bare": history(6)}, 0.8, 0.9)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "gate opens (step 3, wrapper)" in labels and "gate opens (step 6, bare)" in labels
    styles = {line.get_linestyle() for line in ax.get_lines()[:2]}
    assert styles == {"-", "--"}  # one style per run
    # each run's gate line, and its legend entry, in that run's line style
    gate_lines = [line for line in ax.get_lines() if line.get_xdata()[0] in (3, 6)
                  and len(set(line.get_xdata())) == 1]
    assert [line.get_linestyle() for line in gate_lines] == ["-", "--"]
    entries = dict(zip(labels, ax.get_legend().get_lines(), strict=True))
    assert entries["gate opens (step 3, wrapper)"].get_linestyle() == "-"
    assert entries["gate opens (step 6, bare)"].get_linestyle() == "--"


def test_plot_runs_one_run_has_no_run_legend_and_too_many_runs_raise():
    ax = plot_runs({"only": history(4)}, ["pull"], title="Pull", gate=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pull"]
    with pytest.raises(ValueError, match="at most 3 runs"):
        plot_runs({str(i): history(4) for i in range(4)}, ["pull"])


def test_loss_dict_events():
    table = loss_dict_events({"a": history(5, back=9), "b": history(5)})
    assert table.loc["a", "gate opens"] == 5 and table.loc["a", "anchor CE first 0"] == 6
    assert table.loc["a", "anchor CE above 0 again"] == "9"
    assert table.loc["b", "anchor CE above 0 again"] == "never"
    assert table.loc["b", "pull at gate"] == pytest.approx(0.15)
