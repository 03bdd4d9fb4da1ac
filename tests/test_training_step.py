"""One SAR training step as a GPU sees it: host syncs, when inputs are checked, the feature tap,
torch.compile, the projector's init and gradient accumulation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import sar
from sar import SemanticAnchorRegularizer, no_anchor_update
from sar.regularizer import VALIDATE_FIRST_CALLS


class TinySegmenter(nn.Module):
    """An smp-shaped model: a body, then ``segmentation_head[0]``, a 3x3 conv."""

    def __init__(self, classes: int = 5, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.segmentation_head = nn.Sequential(nn.Conv2d(width, classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.body(x))


def segmentation_case(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = sar.SARSegmentationModel(TinySegmenter(), use_gate=False, **options).train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (2, 16, 16), generator=g)
    y[:, :2] = 255
    return model, x, y


def classifier_case(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    model = sar.SARClassifier(net, head_name="3", use_gate=False)
    g = torch.Generator().manual_seed(seed)
    return model.train(), torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 4, (8,),
                                                                            generator=g)


def train_step(model, x, y):
    logits, losses = model(x, y)
    loss = nn.functional.cross_entropy(logits, y, ignore_index=255) + losses["loss"]
    loss.backward()
    return losses


def host_syncs(fn) -> int:
    """How many times ``fn`` reads a tensor back to the host (``aten::_local_scalar_dense``:
    ``.item()``, ``bool(tensor)``, ``if tensor:``), counted by PyTorch's profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.name == "aten::_local_scalar_dense" for event in prof.events())


# ------------------------------------------------------------------------- host syncs
def test_a_steady_training_step_reads_nothing_back_to_the_host():
    model, x, y = segmentation_case()
    for _ in range(VALIDATE_FIRST_CALLS):
        train_step(model, x, y)
    assert model.regularizer.gate_opened  # the pull runs
    assert host_syncs(lambda: train_step(model, x, y)) == 0
    fresh, _, _ = segmentation_case()
    assert host_syncs(lambda: train_step(fresh, x, y)) > 0  # the first calls do check values


def test_value_checks_run_on_the_first_calls_then_stop():
    reg = SemanticAnchorRegularizer(3, 4)
    head = nn.Linear(4, 3)
    features, bad = torch.rand(5, 4), torch.tensor([0, 1, 2, 7, 1])
    for _ in range(VALIDATE_FIRST_CALLS - 1):
        reg(features, torch.zeros(5, dtype=torch.long), head)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[7\]"):
        reg(features, bad, head)  # the last checked call
    with pytest.raises(FloatingPointError):
        SemanticAnchorRegularizer(3, 4)(torch.full((5, 4), math.nan), bad.clamp(max=2), head)


@pytest.mark.parametrize(("validate", "checks_late_calls"),
                         [("always", True), (True, True), ("first", False)])
def test_validate_always_checks_every_call(validate, checks_late_calls):
    reg = SemanticAnchorRegularizer(3, 4, validate=validate)
    head, features = nn.Linear(4, 3), torch.rand(5, 4)
    for _ in range(VALIDATE_FIRST_CALLS + 2):
        reg(features, torch.zeros(5, dtype=torch.long), head)
    calls = host_syncs(lambda: reg(features, torch.zeros(5, dtype=torch.long), head))
    assert (calls > 0) == checks_late_calls


@pytest.mark.parametrize("validate", ["never", False])
def test_validate_never_checks_no_value(validate):
    reg = SemanticAnchorRegularizer(3, 4, validate=validate)
    assert host_syncs(lambda: reg(torch.rand(5, 4), torch.zeros(5, dtype=torch.long),
                                  nn.Linear(4, 3))) == 0


def test_an_unknown_validate_mode_is_refused():
    with pytest.raises(ValueError, match="validate must be one of"):
        SemanticAnchorRegularizer(3, 4, validate="sometimes")


# ---------------------------------------------------------------------------- the tap
def test_the_feature_tap_is_one_hook_that_records_nothing_in_eval():
    model, x, y = segmentation_case()
    head = model.head
    for _ in range(3):
        train_step(model, x, y)
    assert len(head._forward_pre_hooks) == 1
    model.eval()(x)
    assert model._tap.inputs == {}  # no feature map kept alive after the call


def test_a_replaced_head_gets_the_tap():
    model, x, y = segmentation_case()
    train_step(model, x, y)
    model.model.segmentation_head[0] = nn.Conv2d(8, 5, 3, padding=1)
    losses = train_step(model, x, y)
    assert torch.isfinite(losses["loss"])
    assert len(model.head._forward_pre_hooks) == 1


def test_a_deep_copy_taps_its_own_head():
    model, x, y = segmentation_case()
    twin = copy.deepcopy(model)
    features, _ = twin.features_and_logits(x)
    assert features.shape == (2, 8, 16, 16) and model._tap.inputs == {}


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("case", [segmentation_case, classifier_case],
                         ids=["segmentation", "classifier"])
def test_a_compiled_training_step_captures_the_whole_graph_and_equals_eager(case):
    eager, x, y = case()
    compiled_copy = copy.deepcopy(eager)
    compiled = torch.compile(compiled_copy, fullgraph=True)  # a graph break raises here
    for _ in range(2):
        ours, theirs = train_step(compiled, x, y), train_step(eager, x, y)
        for key in theirs:
            assert torch.allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6), key
    for (name, p), q in zip(eager.named_parameters(), compiled_copy.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), name
    for key in ("semantic_anchors", "gate_opened", "num_updates"):
        assert torch.allclose(getattr(eager.regularizer, key).float(),
                              getattr(compiled_copy.regularizer, key).float(), atol=1e-6), key


# --------------------------------------------------------------------- projector init
def test_the_projector_starts_as_the_authors_conv_module():
    torch.manual_seed(0)
    third = SemanticAnchorRegularizer(10, 512).projector[6].weight
    assert third.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    torch.manual_seed(0)
    torch_default = SemanticAnchorRegularizer(10, 512, projector_init="torch").projector[6]
    assert torch_default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 512), rel=0.02)


def test_projector_init_torch_is_bitwise_the_earlier_projector():
    torch.manual_seed(0)
    ours = SemanticAnchorRegularizer(4, 6, projector_init="torch").projector
    torch.manual_seed(0)
    earlier = nn.Sequential(*[layer for bias in (True, True, False) for layer in (
        nn.Linear(6, 6, bias=bias), nn.BatchNorm1d(6), nn.ReLU(inplace=True))])
    for a, b in zip(ours.state_dict().values(), earlier.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_an_unknown_projector_init_is_refused():
    with pytest.raises(ValueError, match="projector_init must be one of"):
        SemanticAnchorRegularizer(4, 6, projector_init="xavier")


# -------------------------------------------------------------- gradient accumulation
def test_micro_batches_under_no_anchor_update_advance_the_ema_once_per_step():
    model, x, y = segmentation_case(momentum=0.9)
    once, _, _ = segmentation_case(momentum=0.9)
    for step in range(3):
        for micro in range(4):
            with no_anchor_update(model) if micro else torch.enable_grad():
                train_step(model, x, y)
        train_step(once, x, y)  # one call per step: what the EMA should follow
        assert model.regularizer.num_updates == step + 1
        assert torch.allclose(model.regularizer.semantic_anchors,
                              once.regularizer.semantic_anchors, atol=1e-6)
    assert model.regularizer.update_state  # restored after the block
