"""Reading ``sar.train.fit``'s history (one row per logged step): when SAR's gate opened, when
the anchor CE reached zero and came back, and the pull around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def gate_opened_step(history: Any) -> int | None:
    """First logged step at which the SAR gate had opened; None if it never did, or if
    ``history`` (``sar.train.fit``'s DataFrame: columns ``step``, ``gate_opened``, ...) has no
    gate (a run without SAR).

    Only as precise as ``fit``'s ``log_every``: the gate opened at this step or at one of the
    unlogged steps just before it.
    """
    if "gate_opened" not in history:
        return None
    opened = history.loc[history["gate_opened"] > 0, "step"]
    return int(opened.iloc[0]) if len(opened) else None


def loss_dict_events(histories: Mapping[str, pd.DataFrame], last: int = 5) -> pd.DataFrame:
    """One row per run: the step at which the gate opened, the first step with the anchor CE
    at exactly 0 (every anchor past ``filter_conf``), the later steps where it is above 0
    again, and the pull at the gate and over the ``last`` steps."""
    rows = {}
    for run, h in histories.items():
        gate = gate_opened_step(h)
        zero = (h["anchor_ce"] == 0).to_numpy()
        first = int(zero.argmax()) if zero.any() else None
        back = [] if first is None else h["step"].to_numpy()[first:][~zero[first:]].tolist()
        rows[run] = {"gate opens": gate,
                     "anchor CE first 0": None if first is None else int(h["step"].iloc[first]),
                     "anchor CE above 0 again": ", ".join(map(str, back)) or "never",
                     "pull at gate": np.nan if gate is None else float(
                         h.loc[h["step"] == gate, "pull"].iloc[0]),
                     f"pull, last {last} steps": float(h["pull"].iloc[-last:].mean())}
    return pd.DataFrame.from_dict(rows, orient="index")
