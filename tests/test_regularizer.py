"""SemanticAnchorRegularizer against the loop-based reference, its gradients, state and errors."""

from __future__ import annotations

import io

import pytest
import torch
from reference_sar import ReferenceSAR
from torch import nn

from sar import SemanticAnchorRegularizer
from sar.labels import labels_at_feature_resolution
from sar.regularizer import LOSS_KEYS

C, D = 4, 6


def make_regularizer(**options) -> SemanticAnchorRegularizer:
    # these tests' hand-made confident heads need well-separated projected anchors, which
    # seed 0 gives with PyTorch's default projector init; the reference reads whatever weights
    # the projector has, so the comparisons hold for either init (test_projector_init_*)
    options.setdefault("projector_init", "torch")
    torch.manual_seed(0)
    return SemanticAnchorRegularizer(C, D, **options).double().train()


def confident_classifier(reg: SemanticAnchorRegularizer, scale: float) -> nn.Linear:
    """A linear head whose rows are the projected anchors: scale sets how confident it is."""
    with torch.no_grad():
        projected = reg.projector(reg.anchors)
        head = nn.Linear(D, C).double().to(projected.device)
        head.weight.copy_(scale * projected / projected.norm(dim=1, keepdim=True))
        head.bias.zero_()
    return head


def assert_matches(ours: dict, ref: dict) -> None:
    for key, value in ref.items():
        assert ours[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key


def run_both(reg, ref, head, features, labels):
    ours = reg(features, labels, head)
    theirs = ref.step(reg.anchors, reg.projector, head.weight, head.bias, features, labels)
    return ours, theirs


def segmentation_batch(seed=0, size=(5, 7), label_size=(10, 14), ignore_fraction=0.2,
                       device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(2, D, *size, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (2, *label_size), generator=g)
    labels[torch.rand(labels.shape, generator=g) < ignore_fraction] = 255
    return features.to(device), labels.to(device)


# ------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_segmentation_matches_reference_closed_then_first_copy_then_ema(distance, device):
    reg = make_regularizer(momentum=0.9, distance=distance).to(device)
    ref = ReferenceSAR(C, momentum=0.9, distance=distance)
    features, labels = segmentation_batch(device=device)

    closed, ref_closed = run_both(reg, ref, confident_classifier(reg, 0.5), features, labels)
    assert ref_closed["gate_passed"] == 0.0
    assert_matches(closed, ref_closed)
    assert closed["pull"].item() == 0.0

    head = confident_classifier(reg, 40.0)
    first, ref_first = run_both(reg, ref, head, features, labels)
    assert ref_first["gate_passed"] == 1.0
    assert_matches(first, ref_first)
    assert torch.allclose(reg.semantic_anchors.cpu(), torch.tensor(ref.ema, dtype=torch.float64))

    with torch.no_grad():  # move the projector so the EMA blends a different z
        reg.projector[0].weight.add_(0.05 * torch.randn_like(reg.projector[0].weight))
    later, ref_later = run_both(reg, ref, head, features, labels)
    assert ref_later["gate_passed"] == 1.0
    assert_matches(later, ref_later)
    assert torch.allclose(reg.semantic_anchors.cpu(), torch.tensor(ref.ema, dtype=torch.float64))
    assert reg.num_updates.item() == 2


def test_classification_matches_reference_with_ignored_labels(device):
    reg = make_regularizer(momentum=0.5, trade_off=0.3, trade_off_ce=2.0).to(device)
    ref = ReferenceSAR(C, momentum=0.5, trade_off=0.3, trade_off_ce=2.0)
    g = torch.Generator().manual_seed(1)
    features = torch.rand(9, D, generator=g, dtype=torch.float64).to(device)
    labels = torch.tensor([0, 1, 2, 3, 255, 1, 0, 255, 3], device=device)
    head = confident_classifier(reg, 40.0)
    for _ in range(3):
        ours, theirs = run_both(reg, ref, head, features, labels)
        assert_matches(ours, theirs)


def test_confidence_filter_drops_confident_anchors_and_weights_hard_ones():
    reg = make_regularizer()
    ref = ReferenceSAR(C)
    features, labels = segmentation_batch(size=(3, 3), label_size=(3, 3))
    head = confident_classifier(reg, 15.0)
    with torch.no_grad():
        head.weight[0] *= 0.3  # anchor 0 becomes hard, the others stay above filter_conf
    ours, theirs = run_both(reg, ref, head, features, labels)
    assert_matches(ours, theirs)
    probs = torch.softmax(head(reg.projector(reg.anchors)), dim=1).diagonal()
    assert (probs[1:] > 0.9).all() and probs[0] < 0.9
    # with one unfiltered anchor the weighted CE is exactly that anchor's CE
    assert ours["anchor_ce"].item() == pytest.approx(-torch.log(probs[0]).item(), rel=1e-9)


def test_filter_conf_of_one_keeps_every_anchor():
    reg = make_regularizer(filter_conf=1.0)
    ref = ReferenceSAR(C, filter_conf=1.0)
    features, labels = segmentation_batch(size=(2, 2), label_size=(2, 2))
    ours, theirs = run_both(reg, ref, confident_classifier(reg, 40.0), features, labels)
    assert ours["anchor_ce"].item() > 0
    assert_matches(ours, theirs)


def test_labels_are_nearest_downsampled_like_the_reference():
    reg = make_regularizer(use_gate=False)
    features, labels = segmentation_batch(size=(4, 6), label_size=(9, 13), ignore_fraction=0.0)
    reg(features, labels, confident_classifier(reg, 1.0))  # first step copies z
    ema = reg.semantic_anchors
    ours = reg._pull(features, labels_at_feature_resolution(features, labels, reg.feat_dim))
    ref = ReferenceSAR(C)
    ref.ema = ema.tolist()
    assert ours.item() == pytest.approx(ref._pull(features, labels), rel=1e-9)


# --------------------------------------------------------------------------- gradients
def test_anchor_ce_reaches_projector_and_classifier_but_not_features():
    reg = make_regularizer()
    head = confident_classifier(reg, 2.0)
    features, labels = segmentation_batch()
    features.requires_grad_(True)
    reg(features, labels, head)["anchor_ce"].backward()
    assert features.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert sum(p.grad.abs().sum() for p in reg.projector.parameters() if p.grad is not None) > 0
    assert not reg.anchors.requires_grad and reg.anchors.grad is None


def test_pull_reaches_only_the_features():
    reg = make_regularizer()
    head = confident_classifier(reg, 40.0)
    features, labels = segmentation_batch()
    features.requires_grad_(True)
    out = reg(features, labels, head)
    assert out["gate_passed"].item() == 1.0
    out["pull"].backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.parameters())
    assert all(p.grad is None for p in reg.projector.parameters())
    assert not reg.semantic_anchors.requires_grad


def test_anchors_buffer_never_changes_under_training():
    reg = make_regularizer()
    head = confident_classifier(reg, 40.0)
    before = reg.anchors.clone()
    optimiser = torch.optim.SGD([*reg.parameters(), *head.parameters()], lr=0.1)
    features, labels = segmentation_batch()
    for _ in range(3):
        optimiser.zero_grad()
        reg(features, labels, head)["loss"].backward()
        optimiser.step()
    assert torch.equal(reg.anchors, before)
    assert "anchors" not in dict(reg.named_parameters())


# ------------------------------------------------------------------------ keys and state
def test_same_keys_whether_gate_is_closed_or_open():
    reg = make_regularizer()
    features, labels = segmentation_batch()
    closed = reg(features, labels, confident_classifier(reg, 0.1))
    opened = reg(features, labels, confident_classifier(reg, 40.0))
    assert tuple(closed) == tuple(opened) == LOSS_KEYS
    assert closed["gate_opened"].item() == 0.0 and opened["gate_opened"].item() == 1.0


def test_toy_batch_losses_with_and_without_the_gate():
    """Notebook 01's toy batch: the regulariser's returned values, pinned to 3 decimals."""
    def losses(**options):
        torch.manual_seed(0)
        reg = SemanticAnchorRegularizer(num_classes=4, feat_dim=8, **options)
        head = nn.Linear(8, 4)
        features = torch.rand(6, 8, generator=torch.Generator().manual_seed(0))
        out = reg(features, torch.tensor([0, 1, 2, 3, 0, 1]), classifier=head)
        return reg, {key: round(value.item(), 3) for key, value in out.items()}

    reg, gated = losses()
    assert gated == {"anchor_ce": 1.477, "pull": 0.0, "loss": 1.477, "gate_passed": 0.0,
                     "gate_opened": 0.0, "anchor_accuracy": 0.25, "min_anchor_prob": 0.169}
    assert reg.num_updates.item() == 0  # a closed gate leaves the semantic anchors alone
    reg, ungated = losses(use_gate=False)
    assert ungated == {**gated, "pull": 0.033, "loss": 1.511, "gate_passed": 1.0,
                       "gate_opened": 1.0}
    assert reg.num_updates.item() == 1  # the first call copied z into the semantic anchors


def test_state_dict_round_trip_restores_gate_and_ema(device):
    reg = make_regularizer(momentum=0.9).to(device)
    head = confident_classifier(reg, 40.0)
    features, labels = segmentation_batch(device=device)
    reg(features, labels, head)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)

    torch.manual_seed(123)  # a differently initialised twin
    twin = SemanticAnchorRegularizer(C, D, momentum=0.9, anchor_seed=7).double().train()
    twin.to(device)
    assert not twin.gate_opened
    twin.load_state_dict(torch.load(buffer))
    for name in ("anchors", "semantic_anchors", "gate_opened", "num_updates"):
        assert torch.equal(getattr(twin, name), getattr(reg, name)), name
    ours, theirs = reg(features, labels, head), twin(features, labels, head)
    for key in LOSS_KEYS:
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(twin.semantic_anchors, reg.semantic_anchors)


def test_eval_mode_leaves_the_state_alone():
    reg = make_regularizer()
    head = confident_classifier(reg, 40.0)
    features, labels = segmentation_batch()
    reg.eval()
    reg(features, labels, head)
    assert not reg.gate_opened and reg.num_updates.item() == 0


def test_pull_after_open_keeps_pulling_when_the_gate_closes_again():
    features, labels = segmentation_batch()
    for pull_after_open, expect_pull in ((False, False), (True, True)):
        reg = make_regularizer(pull_after_open=pull_after_open)
        reg(features, labels, confident_classifier(reg, 40.0))
        out = reg(features, labels, confident_classifier(reg, 0.1))
        assert out["gate_passed"].item() == 0.0
        assert (out["pull"].item() > 0) == expect_pull


def test_all_ignore_batch_gives_zero_pull_not_nan():
    reg = make_regularizer()
    features, labels = segmentation_batch()
    out = reg(features, torch.full_like(labels, 255), confident_classifier(reg, 40.0))
    assert out["gate_passed"].item() == 1.0
    assert out["pull"].item() == 0.0 and torch.isfinite(out["loss"])


# ----------------------------------------------------------------- classifiers and autocast
def test_conv_heads_of_any_odd_kernel_act_like_their_centre_tap():
    reg = make_regularizer()
    features, labels = segmentation_batch()
    linear = nn.Linear(D, C).double()
    for kernel in (1, 3, 5):
        conv = nn.Conv2d(D, C, kernel, padding=kernel // 2).double()
        with torch.no_grad():
            linear.weight.copy_(conv.weight[:, :, kernel // 2, kernel // 2])
            linear.bias.copy_(conv.bias)
        a = reg(features, labels, conv)["anchor_ce"]
        b = reg(features, labels, linear)["anchor_ce"]
        assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_callable_classifier_is_accepted():
    reg = make_regularizer()
    head = confident_classifier(reg, 3.0)
    features, labels = segmentation_batch()
    a = reg(features, labels, head)["anchor_ce"]
    b = reg(features, labels, lambda z: z @ head.weight.T + head.bias)["anchor_ce"]
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_anchor_branch_runs_in_float32_under_autocast(device):
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D).train().to(device)
    head = nn.Conv2d(D, C, 1).to(device)
    features = torch.rand(2, D, 4, 4).to(device)
    labels = torch.randint(0, C, (2, 4, 4)).to(device)
    plain = reg(features, labels, head)["anchor_ce"]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mixed = reg(features.bfloat16(), labels, head)
    assert mixed["anchor_ce"].dtype == torch.float32
    assert mixed["anchor_ce"].item() == pytest.approx(plain.item(), rel=1e-6)
    assert mixed["pull"].dtype == torch.float32


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "features, labels, match",
    [
        (torch.rand(2, D, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long), "batch mismatch"),
        (torch.rand(2, D + 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "feat_dim=6"),
        (torch.rand(2, D, 4), torch.zeros(2, 4, dtype=torch.long), r"\(B, D\) or \(B, D, H, W\)"),
        (torch.rand(2, D), torch.zeros(2, 3, dtype=torch.long), r"labels must be \(B,\)"),
        (torch.rand(2, D, 4, 4), torch.full((2, 4, 4), 7), r"\[0, 4\).*found \[7\]"),
        (torch.rand(2, D, 4, 4), torch.full((2, 4, 4), -1), r"found \[-1\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(features, labels, match):
    reg = SemanticAnchorRegularizer(C, D).train()
    with pytest.raises(ValueError, match=match):
        reg(features, labels, nn.Conv2d(D, C, 1))


def test_float_labels_are_rejected():
    reg = SemanticAnchorRegularizer(C, D).train()
    with pytest.raises(TypeError, match="integer tensor"):
        reg(torch.rand(2, D), torch.zeros(2), nn.Linear(D, C))


def test_non_finite_features_raise():
    reg = SemanticAnchorRegularizer(C, D).train()
    features = torch.rand(2, D, 4, 4)
    features[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        reg(features, torch.zeros(2, 4, 4, dtype=torch.long), nn.Conv2d(D, C, 1))


@pytest.mark.parametrize(
    "classifier, match",
    [
        (nn.Linear(D, C + 2), "num_classes=4"),
        (nn.Conv2d(D, C, 3, padding=0), "padding = kernel_size // 2"),
    ],
)
def test_mismatched_classifier_raises(classifier, match):
    reg = SemanticAnchorRegularizer(C, D).train()
    with pytest.raises(ValueError, match=match):
        reg(torch.rand(2, D), torch.zeros(2, dtype=torch.long), classifier)


@pytest.mark.parametrize(
    "options, match",
    [({"distance": "l1"}, "distance"), ({"momentum": 1.0}, "momentum"),
     ({"update_conf": 1.5}, "update_conf"), ({"ignore_index": 2}, "real class id")],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        SemanticAnchorRegularizer(C, D, **options)


# ------------------------------------------------------------------------ half precision
LOW_PRECISION = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                                        ids=["fp16", "bf16"])
CONVERSIONS = {
    "half()": lambda m: m.half(),
    "bfloat16()": lambda m: m.bfloat16(),
    "to(float16)": lambda m: m.to(torch.float16),
    "to(cpu, bfloat16)": lambda m: m.to("cpu", torch.bfloat16),
    "parent.half()": lambda m: nn.Sequential(m).half()[0],
}


def float_dtypes(module: nn.Module) -> set[torch.dtype]:
    tensors = [*module.parameters(), *module.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


@pytest.mark.parametrize("convert", CONVERSIONS.values(), ids=CONVERSIONS.keys())
def test_converting_to_low_precision_keeps_the_state_in_float32(convert):
    reg = SemanticAnchorRegularizer(C, D)
    anchors = reg.anchors.clone()
    reg = convert(reg)
    assert float_dtypes(reg) == {torch.float32}
    assert torch.equal(reg.anchors, anchors)  # not rounded through half on the way
    assert reg.gate_opened.dtype == torch.bool and reg.num_updates.dtype == torch.long
    assert float_dtypes(make_regularizer()) == {torch.float64}  # .double() is kept


def low_precision_setup(dtype: torch.dtype, scale: float):
    """A float32 regulariser, then it, the head and the features converted to ``dtype``."""
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, projector_init="torch").train()  # see make_regularizer
    head = confident_classifier(reg.double(), scale).float()
    reg.float()
    features = torch.rand(8, D)
    labels = torch.arange(8) % C
    return reg, head, features, labels, (reg.to(dtype), head.to(dtype), features.to(dtype))


@LOW_PRECISION
def test_low_precision_model_gives_the_float32_losses(dtype):
    """Every anchor confident: in fp16 the 1e-9 of the weights underflowed and gave NaN."""
    reg, head, features, labels, (low_reg, low_head, low_features) = low_precision_setup(
        dtype, 40.0)
    out = low_reg(low_features, labels, low_head)
    assert out["gate_passed"].item() == 1.0 and out["anchor_ce"].item() == 0.0
    assert all(value.dtype == torch.float32 for value in out.values())
    reference = SemanticAnchorRegularizer(C, D).train()  # float32 twin on the rounded inputs
    reference.load_state_dict(reg.state_dict())
    reference.semantic_anchors.zero_()
    reference.gate_opened.zero_()
    expected = reference(low_features.float(), labels, low_head.float())
    for key in ("anchor_ce", "pull", "loss", "min_anchor_prob"):
        assert out[key].item() == pytest.approx(expected[key].item(), rel=1e-5, abs=1e-7), key


@LOW_PRECISION
def test_low_precision_model_keeps_the_ema_moving(dtype):
    """In bf16, 0.999 * x + 0.001 * y rounded back to x: the semantic anchors froze."""
    _, _, _, labels, (reg, head, features) = low_precision_setup(dtype, 40.0)
    reg(features, labels, head)  # the first passing step copies z
    first = reg.semantic_anchors.clone()
    with torch.no_grad():
        reg.projector[0].weight.add_(0.01 * torch.randn_like(reg.projector[0].weight))
        z = reg.projector(reg.anchors)
    assert reg(features, labels, head)["gate_passed"].item() == 1.0
    assert reg.semantic_anchors.dtype == torch.float32
    assert torch.allclose(reg.semantic_anchors, 0.999 * first + 0.001 * z, rtol=0, atol=1e-6)
    assert not torch.equal(reg.semantic_anchors, first)


@LOW_PRECISION
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_low_precision_classifier_is_trained_through_float32_logits(dtype, kind):
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D).train()  # left float32: only the head is converted
    head = (nn.Linear(D, C) if kind == "linear" else nn.Conv2d(D, C, 3, padding=1)).to(dtype)
    shape = (2, D) if kind == "linear" else (2, D, 3, 3)
    labels = torch.zeros(shape[:1] + shape[2:], dtype=torch.long)
    out = reg(torch.rand(shape, dtype=dtype), labels, head)
    assert out["anchor_ce"].dtype == torch.float32
    out["anchor_ce"].backward()
    assert head.weight.grad.dtype == dtype and head.weight.grad.abs().sum() > 0
