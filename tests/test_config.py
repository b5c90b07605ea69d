from __future__ import annotations

import math

import pytest

from ralu import Baseline, RALUConfig


def test_presets_are_the_reference_values():
    four = RALUConfig.preset("flux-dev-4x")
    assert (four.steps, four.ends, four.up_ratio) == ((5, 6, 7), (0.3, 0.45, 1.0), 0.3)
    assert four.shifts == (5.019, 2.589, 2.226) and four.noise_ratio == 6.317
    seven = RALUConfig.preset("flux-dev-7x")
    assert (seven.steps, seven.ends, seven.up_ratio) == ((2, 3, 5), (0.2, 0.3, 1.0), 0.1)
    assert seven.shifts == (8.141, 2.856, 2.193) and seven.noise_ratio == 6.261


@pytest.mark.parametrize("name, tokens", [
    # 1024x1024 FLUX: 64x64 full tokens, 32x32 low; stage 2 = (M - k) + 4k, k = floor(r M)
    ("flux-dev-4x", (1024, 1024 - 307 + 4 * 307, 4096)),
    ("flux-dev-7x", (1024, 1024 - 102 + 4 * 102, 4096)),
])
def test_preset_token_counts(name, tokens):
    assert RALUConfig.preset(name).tokens_per_stage(4096) == tokens


def test_custom_config_takes_shifts_from_ntdm():
    from ralu.ntdm import ntdm_objective

    reference = RALUConfig(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3, base_shift=3.0,
                           ntdm_method="reference")
    assert reference.shifts == pytest.approx((5.019, 2.589, 2.226), abs=1e-3)
    assert reference.noise_ratio == pytest.approx(6.317, abs=1e-3)
    robust = reference.replace(ntdm_method="robust", shifts=None, noise_ratio=None)
    objective = lambda c: ntdm_objective(c.shifts, c.noise_ratio, c.steps, c.ends, 3.0)  # noqa: E731
    assert objective(robust) < objective(reference)


def test_an_auto_config_is_solved_when_resolved():
    config = RALUConfig(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3)
    assert config.base_shift == "auto" and not config.resolved and config.shifts is None
    with pytest.raises(ValueError, match="resolve"):
        config.stages
    resolved = config.resolve(3.0)
    assert resolved.resolved and resolved.base_shift == 3.0
    from ralu import solve_ntdm

    assert (resolved.shifts, resolved.noise_ratio) == solve_ntdm((5, 6, 7), (0.3, 0.45, 1.0), 3.0)


def test_given_noise_ratio_is_kept_and_shifts_solved():
    config = RALUConfig(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3, noise_ratio=4.0).resolve(3.0)
    assert config.noise_ratio == 4.0 and len(config.shifts) == 3


def test_each_stage_is_built_with_its_own_shift():
    """σ grids computed here from the definitions, independently of schedule.py."""
    config = RALUConfig.preset("flux-dev-4x").resolve(3.0)
    z = config.noise_ratio
    start = 0.0
    for k, stage in enumerate(config.stages):
        h, end, n = config.shifts[k], config.ends[k], config.steps[k]
        u0 = (1 - start) / (h - (h - 1) * (1 - start))
        u1 = (1 - end) / (h - (h - 1) * (1 - end))
        expected = [h * u / (1 + (h - 1) * u) for u in (u0 + (u1 - u0) * i / n for i in range(n + 1))]
        assert stage.sigmas == pytest.approx(expected, abs=1e-12), f"stage {k + 1}"
        start = end / (z * (1 - end) + end)
    assert len(set(config.shifts)) == 3  # the test needs distinct shifts


def test_stage_grids_join_restart_progress():
    config = RALUConfig.preset("flux-dev-4x").resolve(3.0)
    stages = config.stages
    assert [s.resolution for s in stages] == ["low", "mixed", "full"]
    assert [s.steps for s in stages] == [5, 6, 7]
    assert stages[0].sigmas[0] == 1.0 and stages[-1].sigmas[-1] == pytest.approx(0.0, abs=1e-15)
    for k in range(3):
        assert stages[k].sigmas[0] == pytest.approx(1 - config.restarts[k], abs=1e-12)
        assert stages[k].sigmas[-1] == pytest.approx(1 - config.ends[k], abs=1e-12)
        assert all(a > b for a, b in zip(stages[k].sigmas, stages[k].sigmas[1:]))
    # renoising lands on the flow path: beta*e = s and beta*(1-e) = alpha/Z (docs/method.md §3)
    for k in (1, 2):
        e, s, z = config.ends[k - 1], config.restarts[k], config.noise_ratio
        assert stages[k].beta * e == pytest.approx(s, rel=1e-12)
        assert stages[k].beta * (1 - e) == pytest.approx(stages[k].alpha / z, rel=1e-12)
        assert stages[k].alpha == pytest.approx(1 - s, rel=1e-12)


def test_selected_tokens_floor_is_robust_to_float_products():
    config = RALUConfig(steps=(1, 1, 1), ends=(0.3, 0.45, 1.0), up_ratio=0.29, shifts=(3, 3, 3), noise_ratio=6)
    assert 0.29 * 100 < 29  # the float product that int(M * r) truncates to 28
    assert config.selected_tokens(100) == 29
    assert config.selected_tokens(99) == math.floor(0.29 * 99)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=(5, 0, 7)), r"steps must be three integers >= 1"),
    (dict(steps=(5, 6)), r"steps must be three integers"),
    (dict(steps=(5, 6.0, 7)), r"steps must be three integers"),
    (dict(ends=(0.45, 0.3, 1.0)), r"ends must increase strictly.*got \(0.45, 0.3, 1.0\)"),
    (dict(ends=(0.3, 0.45, 0.9)), r"ends must .*end at 1.0"),
    (dict(ends=(0.0, 0.45, 1.0)), r"ends must .*0 < e1"),
    (dict(up_ratio=1.5), r"up_ratio must be a number in \[0, 1\], got 1.5"),
    (dict(up_ratio=-0.1), r"up_ratio must be a number in \[0, 1\]"),
    (dict(up_ratio=True), r"up_ratio must be a number in \[0, 1\], got True"),
    (dict(up_ratio=float("nan")), r"up_ratio must be a number in \[0, 1\], got nan"),
    (dict(noise_ratio=1.5), r"noise_ratio must be a finite number >= 2.*got 1.5"),
    (dict(noise_ratio=float("inf")), r"noise_ratio must be a finite number >= 2.*got inf"),
    (dict(shifts=(1.0, 0.0, 2.0)), r"shifts must be three finite numbers > 0"),
    (dict(shifts=(1.0, -2.0, 2.0)), r"shifts must be three finite numbers > 0"),
    (dict(shifts=(1.0, 2.0, float("inf"))), r"shifts must be three finite numbers > 0.*inf"),
    (dict(base_shift=0), r"base_shift must be 'auto' or a finite number > 0"),
    (dict(base_shift="dynamic"), r"base_shift must be 'auto' or a finite number > 0, got 'dynamic'"),
    (dict(steps=5), r"steps must be three integers >= 1 \(N1, N2, N3\), got 5"),
    (dict(ends=0.3), r"ends must be three"),
    (dict(ends=(0.3, float("nan"), 1.0)), r"ends must be three finite progresses"),
    (dict(canny_clip_unit="yes"), r"canny_clip_unit must be True or False, got 'yes'"),
    (dict(upsample="bilinear"), r"upsample must be one of \('token_repeat', 'latent_nearest'\), got 'bilinear'"),
    (dict(token_position="middle"), r"token_position must be one of"),
])
def test_validation_errors_name_the_field(kwargs, match):
    base = dict(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3, shifts=(3.0, 3.0, 3.0), noise_ratio=6.0)
    with pytest.raises(ValueError, match=match):
        RALUConfig(**{**base, **kwargs})


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match=r"preset must be one of \[.*'flux-dev-4x', 'flux-dev-5x', 'flux-dev-7x'.*\], got 'flux-9x'"):
        RALUConfig.preset("flux-9x")


def test_replace_validates_again():
    with pytest.raises(ValueError, match="up_ratio"):
        RALUConfig.preset("flux-dev-4x").replace(up_ratio=2.0)


def test_baseline_validation_and_grid():
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0"):
        Baseline(0)
    with pytest.raises(ValueError, match=r"shift must be a finite number > 0 or None"):
        Baseline(10, shift=-1.0)
    with pytest.raises(ValueError, match=r"shift must be a finite number > 0 or None"):
        Baseline(10, shift=float("nan"))
    with pytest.raises(ValueError, match="resolve it first"):
        Baseline(10).stages
    (stage,) = Baseline(4, shift=1.0).stages
    assert stage.sigmas == pytest.approx((1.0, 0.75, 0.5, 0.25, 0.0))


def test_sd3_presets_are_the_paper_values_and_close_to_ntdm():
    from ralu import solve_ntdm

    two = RALUConfig.preset("sd3-2x")
    assert (two.steps, two.ends, two.up_ratio, two.solved_shift) == ((5, 6, 9), (0.2, 0.3, 1.0), 0.3, 3.0)
    assert two.shifts == (6.121, 2.23, 1.97) and two.noise_ratio == pytest.approx(1 / math.sqrt(0.0586), rel=1e-12)
    three = RALUConfig.preset("sd3-3x")
    assert (three.steps, three.ends, three.up_ratio) == ((3, 3, 6), (0.25, 0.3, 1.0), 0.2)
    assert three.shifts == (6.40, 2.60, 2.273) and three.noise_ratio == pytest.approx(1 / math.sqrt(0.0255), rel=1e-12)
    # the paper prints NT-DM's solution at base shift 3.0 to 2-4 digits (README, SD3 presets)
    for config, shift_tol, ratio_tol in ((two, (1e-3, 7e-3, 3e-3), 1e-3), (three, (2e-3, 2e-3, 1e-3), 5e-3)):
        shifts, ratio = solve_ntdm(config.steps, config.ends, 3.0, method="reference")
        assert all(abs(a - b) <= tol for a, b, tol in zip(shifts, config.shifts, shift_tol))
        assert abs(ratio - config.noise_ratio) <= ratio_tol


@pytest.mark.parametrize("name, tokens", [
    # SD3 at 1024²: 64x64 full tokens (patch 2 on the 8x latent), 32x32 low
    ("sd3-2x", (1024, 1024 - 307 + 4 * 307, 4096)),
    ("sd3-3x", (1024, 1024 - 204 + 4 * 204, 4096)),
])
def test_sd3_preset_token_counts(name, tokens):
    assert RALUConfig.preset(name).tokens_per_stage(4096) == tokens


def test_table_positions_default_and_validation():
    assert RALUConfig.preset("sd3-3x").table_positions == "stock_then_full"  # docs/sd3_positions.md
    with pytest.raises(ValueError, match=r"table_positions must be one of \('low_grid', 'full_grid', "
                                         r"'stock_then_full'\), got 'centre'"):
        RALUConfig.preset("sd3-3x", table_positions="centre")


def test_baseline_with_an_explicit_grid():
    (stage,) = Baseline(2, sigmas=(1.0, 0.4, 0.0)).stages
    assert stage.sigmas == (1.0, 0.4, 0.0)
    with pytest.raises(ValueError, match=r"sigmas must be 3 decreasing noise levels from <= 1 to 0"):
        Baseline(2, sigmas=(1.0, 0.5, 0.6))
    with pytest.raises(ValueError, match=r"sigmas must be 3 decreasing"):
        Baseline(2, sigmas=(1.0, 0.0))


def test_noise_downsample_default_and_validation():
    assert RALUConfig.preset("flux-dev-4x").noise_downsample == "block_sum"  # the paper's is "nearest"
    with pytest.raises(ValueError, match=r"noise_downsample must be one of \('nearest', 'block_sum'\), got 'mean'"):
        RALUConfig.preset("flux-dev-4x", noise_downsample="mean")
