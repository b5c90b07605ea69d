"""tools/pair_residual.py: the residual's known answers and the held-out pairs it is measured on."""

from __future__ import annotations

import pytest
import torch

from ralu.demo import shapes
from tests.eval import load_tool


def test_residual_is_zero_for_the_exact_difference_and_one_when_it_is_ignored():
    tool = load_tool("pair_residual")
    t_a, t_b = torch.randn(2, 5, 16, 48, generator=torch.Generator().manual_seed(0))
    v = torch.randn(5, 16, 48, generator=torch.Generator().manual_seed(1))
    assert tool.residual(v + t_a, v + t_b, t_a, t_b) == pytest.approx(0.0, abs=1e-12)
    assert tool.residual(v, v, t_a, t_b) == pytest.approx(1.0)
    # half the difference predicted: a quarter of its energy left
    assert tool.residual(v + t_a / 2, v + t_b / 2, t_a, t_b) == pytest.approx(0.25)


def test_pairs_are_held_out_scenes_that_their_partner_changes():
    tool = load_tool("pair_residual")
    scenes, partners = tool.pair_scenes("kind", 12)
    assert len(scenes) == 12 and all(len({o.kind for o in s.objects}) == 2 for s in scenes)
    assert partners == [shapes.kinds_swapped(s) for s in scenes]
    scenes, partners = tool.pair_scenes("relation", 12)
    assert all(s.relation is not None for s in scenes) and partners == [shapes.mirrored(s) for s in scenes]
    with pytest.raises(SystemExit, match="PARTNER must be one of"):
        tool.pair_scenes("colour", 4)


def test_each_pair_shares_its_noise_and_each_sigma_mixes_image_and_noise(monkeypatch):
    # a model whose velocity is its input x = (1-σ)·x0 + σ·ε: with the noise shared, v_a - v_b = (1-σ)(x0_a - x0_b)
    # against a target difference x0_b - x0_a, so the residual is (2 - σ)²
    from ralu.adapters.flux import FluxAdapter
    from ralu.demo.model import load_toy

    tool = load_tool("pair_residual")
    monkeypatch.setattr(FluxAdapter, "forward", lambda self, x, positions, sigma, conditioning: x)
    scenes, partners = tool.pair_scenes("kind", 3)
    values = tool.residuals(load_toy(), scenes, partners)
    assert list(values) == list(tool.SIGMAS)
    for sigma, value in values.items():
        assert value == pytest.approx((2 - sigma) ** 2, rel=1e-5)
