"""Anchor generators and their geometry summary."""

from __future__ import annotations

import math

import pytest
import torch

from sar.anchors import (
    ANCHOR_INITS,
    anchor_geometry,
    hypersphere_anchors,
    make_anchors,
    simplex_bound,
)


@pytest.mark.parametrize("init", ANCHOR_INITS)
def test_generators_give_seeded_c_by_d_float32(init):
    a = make_anchors(init, 5, 16, seed=3)
    assert a.shape == (5, 16) and a.dtype == torch.float32
    assert torch.equal(a, make_anchors(init, 5, 16, seed=3))
    assert not torch.equal(a, make_anchors(init, 5, 16, seed=4))


def test_non_gaussian_rows_have_the_gaussian_typical_norm():
    for init in ("orthogonal", "etf", "hypersphere"):
        norms = make_anchors(init, 6, 25).norm(dim=1)
        assert torch.allclose(norms, torch.full((6,), 5.0), atol=1e-5), init


def test_orthogonal_anchors_are_orthogonal():
    assert anchor_geometry(make_anchors("orthogonal", 8, 20)).mean_abs_cosine < 1e-6


def test_etf_reaches_the_simplex_bound_exactly():
    geometry = anchor_geometry(make_anchors("etf", 10, 32))
    off = geometry.cosine[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 9), atol=1e-6)
    assert geometry.min_angle_deg == pytest.approx(geometry.simplex_angle_deg, abs=1e-3)


def test_etf_exists_down_to_c_minus_one_dimensions():
    anchors = make_anchors("etf", 10, 9, seed=2)
    geometry = anchor_geometry(anchors)
    off = geometry.cosine[~torch.eye(10, dtype=torch.bool)]
    assert anchors.shape == (10, 9)
    assert torch.allclose(off, torch.full_like(off, -1 / 9), atol=1e-6)
    assert torch.allclose(anchors.norm(dim=1), torch.full((10,), 3.0), atol=1e-5)
    assert not torch.equal(anchors, make_anchors("etf", 10, 9, seed=3))


def test_hypersphere_beats_gaussian_where_no_closed_form_exists():
    # 10 classes in 3-D: C > D + 1, the ETF does not exist
    packed = anchor_geometry(make_anchors("hypersphere", 10, 3)).min_angle_deg
    random = anchor_geometry(make_anchors("gaussian", 10, 3)).min_angle_deg
    assert packed > random + 10
    assert packed > 55  # the best known packing of 10 points on S^2 is about 64.7 degrees


def test_hypersphere_approaches_the_etf_when_it_exists():
    geometry = anchor_geometry(make_anchors("hypersphere", 5, 8))
    assert geometry.max_cosine == pytest.approx(simplex_bound(5), abs=0.02)


def test_gaussian_anchors_become_orthogonal_in_high_dimension():
    low = anchor_geometry(make_anchors("gaussian", 10, 4)).mean_abs_cosine
    high = anchor_geometry(make_anchors("gaussian", 10, 1024)).mean_abs_cosine
    assert high < 0.05 < low
    assert high == pytest.approx(math.sqrt(2 / (math.pi * 1024)), rel=0.5)


def test_user_tensor_is_copied_and_checked():
    mine = torch.randn(3, 4, dtype=torch.float64)
    anchors = make_anchors(mine, 3, 4)
    assert anchors.dtype == torch.float32 and torch.allclose(anchors.double(), mine, atol=1e-6)
    mine.zero_()
    assert anchors.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        make_anchors(torch.randn(3, 4), 3, 5)


def test_too_many_classes_for_the_dimension_raise():
    with pytest.raises(ValueError, match="orthogonal anchors need num_classes <= dim,"):
        make_anchors("orthogonal", 4, 3)
    with pytest.raises(ValueError, match="need num_classes <= dim \\+ 1.*hypersphere"):
        make_anchors("etf", 5, 3)


def test_unknown_init_lists_the_choices():
    with pytest.raises(ValueError, match="gaussian"):
        make_anchors("uniform", 3, 4)


def test_geometry_summary_prints_angles():
    text = str(anchor_geometry(make_anchors("etf", 4, 4)))
    assert "109.5" in text  # arccos(-1/3): the tetrahedral angle


def test_make_anchors_passes_generator_options_and_rejects_stray_ones():
    quick = make_anchors("hypersphere", 10, 3, steps=5)
    assert not torch.equal(quick, make_anchors("hypersphere", 10, 3))
    assert torch.equal(quick, hypersphere_anchors(10, 3, steps=5))
    with pytest.raises(TypeError, match="take no options"):
        make_anchors("gaussian", 3, 4, steps=5)
    with pytest.raises(TypeError, match="named generator"):
        make_anchors(torch.zeros(3, 4), 3, 4, steps=5)
