"""The benchmark's hardware-independent proxies count what they claim to, on tiny models whose
extra cost over plain training is known: one host sync, one op, one allocation of known size."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn

from sar.baselines import NoRegularizer
from sar.benchmark import (
    TrainStep,
    compare_proxies,
    open_gate,
    peak_in_window,
    profile_step,
)
from sar.models import SARClassifier

FEATURES, CLASSES, BATCH = 8, 4, 6
BIG = 8 * 2**20  # bytes: far above the tiny step's own working memory


class ReadsOneValue(NoRegularizer):
    """Plain CE plus one value read back to the host per call."""

    def forward(self, features, labels, classifier=None):
        float(features.detach().sum())
        return super().forward(features, labels, classifier)


class OneMoreOp(NoRegularizer):
    """Plain CE plus one aten op (a negation of the zero loss, outside autograd)."""

    def forward(self, features, labels, classifier=None):
        return {"loss": super().forward(features, labels, classifier)["loss"].neg()}


class AllocatesBig(NoRegularizer):
    """Plain CE plus a temporary of ``BIG`` bytes, freed before the call returns."""

    def forward(self, features, labels, classifier=None):
        scratch = torch.ones(BIG // 4, device=features.device)
        return {"loss": super().forward(features, labels, classifier)["loss"] + scratch[0] - 1}


class BreaksTheGraph(NoRegularizer):
    def forward(self, features, labels, classifier=None):
        torch._dynamo.graph_break()
        return super().forward(features, labels, classifier)


def tiny(regularizer: nn.Module | None = None, seed: int = 0) -> SARClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, CLASSES))
    return SARClassifier(net, regularizer, head_name="2")


def tiny_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FEATURES, generator=g)
    return x.to(device), torch.arange(BATCH).remainder(CLASSES).to(device)


def cost(regularizer: nn.Module, device: torch.device):
    step = TrainStep(tiny(regularizer).to(device).train(), *tiny_batch(device))
    step(), step()  # warm-up: the optimiser's momentum buffers
    return profile_step(step, device)[0]


def test_one_value_read_back_per_step_is_one_host_sync(device):
    # float(t) records aten::item > aten::_local_scalar_dense: counted once, not twice
    assert cost(NoRegularizer(), device).host_syncs == 0
    assert cost(ReadsOneValue(), device).host_syncs == 1


def test_one_extra_op_per_step_is_counted(device):
    plain, extra = cost(NoRegularizer(), device), cost(OneMoreOp(), device)
    assert extra.aten_ops - plain.aten_ops == 1
    assert extra.host_syncs == plain.host_syncs == 0


def test_a_temporary_of_known_size_raises_the_peak_by_its_size(device):
    plain, extra = cost(NoRegularizer(), device), cost(AllocatesBig(), device)
    assert plain.peak_bytes < 2**16  # the tiny step's own working memory
    assert abs((extra.peak_bytes - plain.peak_bytes) - BIG) <= 2**16
    assert extra.held_bytes == plain.held_bytes  # a temporary is not held between steps


def test_gradients_remade_each_step_are_not_counted_as_extra_peak():
    # zero_grad frees last step's gradients (allocated before profiling began) and backward
    # makes new ones: the peak above the step's start is the activations, not the 4 MiB weight
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, CLASSES))
    model = SARClassifier(wide, NoRegularizer(), head_name="2").train()
    step = TrainStep(model, torch.randn(BATCH, 1024), torch.zeros(BATCH, dtype=torch.long))
    step(), step()
    assert profile_step(step, torch.device("cpu"))[0].peak_bytes < 2**20


def test_held_bytes_are_parameters_gradients_momentum_and_batch():
    step = TrainStep(tiny(NoRegularizer()).train(), *tiny_batch(torch.device("cpu")))
    step()
    params = sum(p.numel() for p in step.model.parameters()) * 4
    batch = BATCH * FEATURES * 4 + BATCH * 8  # float32 inputs, int64 labels
    assert step.held_bytes() == 3 * params + batch


def test_the_peak_is_taken_inside_the_window_above_its_start():
    # allocations before the window set its baseline; a free there of older memory lowers it
    records = [(0, 100), (1, 50), (2, -80), (5, 30), (6, 40), (7, -70), (9, 500)]
    assert peak_in_window(records, start=3, end=8) == 70
    assert peak_in_window(records, start=0, end=1) == 150
    assert peak_in_window([(4, -10)], start=3, end=8) == 0


def test_the_gate_opens_before_measuring_and_plain_has_none():
    x, y = tiny_batch(torch.device("cpu"))
    sar = tiny()
    assert open_gate(sar, x, y) > 0
    assert bool(sar.regularizer.gate_opened)
    assert open_gate(sar, x, y) == 0  # already open
    assert open_gate(tiny(NoRegularizer()), x, y) == 0


def test_compare_proxies_reports_sar_with_its_gate_open():
    row = compare_proxies("tiny", tiny(NoRegularizer()), tiny(), *tiny_batch(torch.device("cpu")),
                          steps=1, rounds=1)
    assert row.gate_opened and not row.error and not row.compiled
    assert row.plain_syncs == 0 and row.extra_syncs == row.sar_syncs
    assert row.extra_ops > 0 and row.plain_ms > 0 and row.train_ratio > 0
    assert row.memory_ratio == pytest.approx(1 + row.extra_peak_fraction)


class Direct(nn.Module):
    """The wrapper's contract without its feature tap, so that it compiles whatever the
    wrapper does: ``forward(x, labels)`` -> ``(logits, regularizer(features, labels, head))``."""

    def __init__(self, regularizer: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.classifier = nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, CLASSES)
        self.regularizer = regularizer

    def features_and_logits(self, x):
        features = self.body(x).relu()
        return features, self.classifier(features)

    def forward(self, x, labels=None):
        features, logits = self.features_and_logits(x)
        if not self.training or labels is None:
            return logits
        return logits, self.regularizer(features, labels, self.classifier)


def test_compare_proxies_measures_a_step_compiled_with_fullgraph():
    row = compare_proxies("tiny", Direct(NoRegularizer()), Direct(OneMoreOp()),
                          *tiny_batch(torch.device("cpu")), compile_backend="eager",
                          steps=1, rounds=1)
    assert row.compiled == "eager" and not row.error
    assert row.plain_syncs == row.sar_syncs == 0 and row.plain_ms > 0


def test_a_graph_break_is_a_row_with_the_error_not_a_crash():
    row = compare_proxies("tiny", Direct(NoRegularizer()), Direct(BreaksTheGraph()),
                          *tiny_batch(torch.device("cpu")), compile_backend="eager")
    assert row.compiled == "eager" and row.error.startswith("sar: ")
    assert "graph_break" in row.error or "Unsupported" in row.error, row.error
    assert row.train_ratio != row.train_ratio  # NaN: nothing was measured
