"""Tests of the ``ralu`` command: schedule, generate, demo."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ralu.cli import main
from ralu.testing import save_tiny_flux


def test_schedule_prints_stage_table(capsys):
    assert main(["schedule", "--preset", "flux-dev-4x"]) == 0
    out = capsys.readouterr().out
    # 1024² FLUX: 32x32 low-res tokens, + 3 x 307 upsampled early, 64x64 at full resolution
    for tokens in ("1024", "1945", "4096"):
        assert tokens in out
    assert "5.019" in out and "6.317" in out  # the preset's shifts and noise ratio
    assert "4.41x" in out  # cost.speedup at 1024², 50 baseline steps


def test_schedule_custom_with_base_shift(capsys):
    # NT-DM's published recipe at base shift 3.0 reproduces the preset's shifts to the printed digit
    assert main(["schedule", "--steps", "5", "6", "7", "--ends", "0.3", "0.45", "1.0", "--up-ratio", "0.3",
                 "--base-shift", "3.0", "--option", "ntdm_method=reference", "--height", "512", "--width", "768"]) == 0
    out = capsys.readouterr().out
    assert "shifts=(5.019, 2.589, 2.226)" in out and "1536" in out  # 32 x 48 full-resolution tokens


@pytest.mark.parametrize(("argv", "named"), [
    (["--steps", "5", "6", "7", "--ends", "0.45", "0.3", "1.0", "--up-ratio", "0.3"], "ends"),
    (["--steps", "5", "6", "7"], "--ends"),
    (["--preset", "flux-dev-4x", "--up-ratio", "0.2"], "choose one schedule"),
    (["--height", "1000"], "height"),
])
def test_schedule_invalid_input(capsys, argv, named):
    assert main(["schedule", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_option_sets_variant_fields_and_schedule_shows_them(capsys):
    argv = ["schedule", "--preset", "sd3-3x", "--option", "table_positions=low_grid", "--option",
            "canny_clip_unit=true"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("(canny_clip_unit=True, table_positions=low_grid)")
    assert main(["schedule", "--preset", "sd3-3x"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("base_shift=3.000")  # defaults are not listed


@pytest.mark.parametrize(("option", "named"), [
    ("table_position=low_grid", "FIELD one of ntdm_method, upsample, canny_clip_unit"),
    ("noise_downsample", "FIELD=VALUE"),
    ("table_positions=aligned", "table_positions must be one of"),
    ("exact_kept_noise=yes", "exact_kept_noise must be true or false"),
])
def test_invalid_option_is_a_one_line_error(capsys, option, named):
    assert main(["schedule", "--preset", "flux-dev-4x", "--option", option]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_unknown_preset_is_a_usage_error(capsys):
    assert main(["schedule", "--preset", "flux-dev-9x"]) == 2
    assert "flux-dev-9x" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux-cli"))


def test_generate_writes_images(tiny_model, tmp_path, capsys):
    output = tmp_path / "out.png"
    argv = ["generate", str(tiny_model), "--prompt", "a red circle", "--height", "64", "--width", "96",
            "--num-images", "2", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    for path in (output, tmp_path / "out_1.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (96, 64)
    out = capsys.readouterr().out
    assert "stage 3" in out and "regions upsampled early" in out


def test_generate_baseline(tiny_model, tmp_path, capsys):
    output = tmp_path / "base.png"
    argv = ["generate", str(tiny_model), "--prompt", "a blue square", "--baseline", "3", "--height", "64",
            "--width", "64", "--output", str(output)]
    assert main(argv) == 0
    with Image.open(output) as image:
        assert image.size == (64, 64)
    assert "16 image tokens" in capsys.readouterr().out


def test_generate_refuses_options_with_a_baseline(tiny_model, tmp_path, capsys):
    argv = ["generate", str(tiny_model), "--prompt", "a blue square", "--baseline", "3", "--option",
            "noise_downsample=nearest", "--output", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert "--option apply to RALU schedules" in capsys.readouterr().err


def test_generate_invalid_size(tiny_model, tmp_path, capsys):
    argv = ["generate", str(tiny_model), "--prompt", "a star", "--height", "48", "--width", "64",
            "--output", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert "height" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_schedule_reports_end_to_end_cost_with_decodes_and_cfg(capsys):
    assert main(["schedule", "--preset", "sd3-3x"]) == 0
    out = capsys.readouterr().out
    assert "sd3-medium" in out and "28 steps" in out and "(CFG)" in out and "region selection" in out
    assert main(["schedule", "--preset", "flux-dev-4x", "--no-cfg"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("end to end"))
    # decodes are extra fixed costs: the end-to-end ratio sits just under the transformer-only 4.41x
    ratio = float(line.rsplit("=", 1)[1].strip().rstrip("x"))
    assert 4.2 < ratio < 4.41


@pytest.mark.slow  # over a second (the planner's search): in make test, not make test-fast
def test_the_toy_model_plans_and_schedules_on_its_own_token_grid(capsys):
    """``--model toy``: the toy's 4 px per token and shift 3, so the CLI's FLOPs speedup at 64 px is the
    one the demo computes from the toy's own token grid, and the planner finds schedules beyond 7x."""
    from ralu.config import RALUConfig
    from ralu.cost import speedup
    from ralu.demo import model as toy

    grid = toy.token_grid()
    preset = RALUConfig.preset("flux-dev-4x").resolve(toy.BASE_SHIFT)
    config = json.loads((toy.DATA_DIR / "transformer" / "config.json").read_text())  # as ralu demo reads it
    expected = speedup(preset, grid[0] * grid[1], 50, config, toy.MAX_WORDS)
    assert main(["schedule", "--preset", "flux-dev-4x", "--model", "toy", "--size", "64x64"]) == 0
    assert f"analytic transformer speedup: {expected:.2f}x" in capsys.readouterr().out
    assert main(["plan", "--speedup", "10", "--model", "toy", "--size", "64x64", "--baseline-steps", "50"]) == 0
    assert "best: --steps 2 2 4 --ends 0.3 0.4 1 --up-ratio 0.1" in capsys.readouterr().out  # the study's plan:10
    assert main(["plan", "--speedup", "10", "--model", "tyo"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
