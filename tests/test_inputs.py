"""Every input that cannot give a correct image is refused early, on one line, naming the parameter;
the CLI answers without loading torch where it can, survives Ctrl-C and a closed pipe; fuzzing over
configs and pipeline arguments."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralu import Baseline, RALUConfig
from ralu.cli import main

SIZE = 64


def one_line_error(capsys, argv, *needles, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --- the CLI, before anything heavy ------------------------------------------------------------------

@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any pipeline is loaded."""
    from diffusers import DiffusionPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("argv, needles", [
    (["--height", "0"], ["--height must be a positive number of px, got 0"]),
    (["--size", "0x64"], ["--width must be a positive"]),
    (["--height", "48", "--width", "64"], ["--height must be a multiple of 32 px for this schedule, got 48"]),
    (["--negative-prompt", "blurry"], ["--negative-prompt needs --true-cfg-scale"]),
    (["--device", "cuda"], ["--device cuda: CUDA is not available"]),
    (["--num-images", "0"], ["--num-images must be >= 1"]),
    (["--baseline", "0"], ["--baseline must be a number of steps >= 1"]),
    (["--output", "x.gif"], ["--output must end in"]),
])
def test_generate_refuses_bad_input_before_loading(tiny_flux_path, tmp_path, capsys, no_loading, argv, needles):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    output = ["--output", str(tmp_path / "out" / "x.png")] if "--output" not in argv else ["--output", str(tmp_path / argv[-1])]
    argv = [a for a in argv if a not in ("--output", "x.gif")]
    one_line_error(capsys, ["generate", str(tiny_flux_path), "--prompt", "a cat", *argv, *output], *needles)
    assert not (tmp_path / "out").exists()  # nothing created


def test_generate_refuses_a_checkpoint_of_another_family(tiny_flux_path, capsys):
    from ralu import RALUStableDiffusion3Pipeline

    with pytest.raises(ValueError, match=r"holds a FluxPipeline, not a StableDiffusion3Pipeline"):
        RALUStableDiffusion3Pipeline.from_pretrained(tiny_flux_path)


def test_an_offline_hub_id_says_so_at_once(tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    one_line_error(capsys, ["generate", "nobody/no-such-model", "--prompt", "a cat", "--output",
                            str(tmp_path / "x.png")], "not in the local hub cache", "offline")


@pytest.mark.parametrize("argv, needle", [
    (["schedule", "--height", "1000000"], "--height must be at most 16384 px"),
    (["schedule", "--baseline-steps", "0"], "--baseline-steps must be >= 1"),
    (["schedule", "--text-tokens", "0"], "--text-tokens must be >= 1"),
    (["schedule", "--size", "1024"], "--size must be WIDTHxHEIGHT"),
    (["schedule", "--steps", "5", "6", "7", "--ends", "0.3", "0.45", "1", "--up-ratio", "0.3", "--shifts", "1", "2",
      "inf"], "shifts must be three finite numbers"),
    (["plan", "--speedup", "0.5"], "target speedup must be a finite number above 1"),
])
def test_cost_commands_refuse_bad_input_on_one_line(capsys, argv, needle):
    one_line_error(capsys, argv, needle)


def test_the_cli_answers_without_torch():
    """`ralu --help`, `ralu schedule` and `ralu plan --help` never import torch or diffusers."""
    code = ("import sys; from ralu.cli import main; "
            "main(['schedule', '--preset', 'flux-dev-7x', '--size', '768x1344']); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_a_closed_pipe_is_silent():
    done = subprocess.run(f"{sys.executable} -m ralu.cli schedule --preset flux-dev-4x | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("flux-dev-4x") and done.stderr == ""


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tiny_flux_path, tmp_path, capsys, monkeypatch):
    from ralu import generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run_generate", interrupted)
    output = tmp_path / "new" / "x.png"
    one_line_error(capsys, ["generate", "toy", "--prompt", "a large red circle", "--output", str(output)],
                   "ralu generate: interrupted", code=130)
    assert not output.parent.exists()


def test_bench_options_reach_the_benchmark(capsys):
    assert main(["bench", "planner", "--", "--help"]) == 0
    assert "--out" in capsys.readouterr().out


def test_generate_toy_works_offline(tmp_path, capsys):
    output = tmp_path / "toy.png"
    assert main(["generate", "toy", "--prompt", "a large red circle left of a small blue square", "--preset",
                 "flux-dev-7x", "--num-images", "2", "--output", str(output)]) == 0
    from PIL import Image

    for path in (output, tmp_path / "toy_1.png"):
        with Image.open(path) as image:
            assert image.size == (64, 64)
    assert "regions upsampled early" in capsys.readouterr().out
    one_line_error(capsys, ["generate", "toy", "--prompt", "a small red puppy", "--output", str(output)],
                   "unknown: ['puppy']")


# --- pipelines: refused before any transformer call -------------------------------------------------------

@pytest.fixture
def watched(ralu_pipe):
    called = []
    handle = ralu_pipe.transformer.register_forward_pre_hook(lambda *a: called.append(1))
    yield ralu_pipe, called
    handle.remove()


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=0), r"height must be a positive multiple of 32 px"),
    (dict(width=-64), r"width must be a positive multiple of 32 px"),
    (dict(height=64.0), r"height must be a positive multiple of 32 px .* got 64.0"),
    (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number, got nan"),
    (dict(true_cfg_scale=float("inf"), negative_prompt="x"), r"true_cfg_scale must be a finite number"),
    (dict(latents=torch.full((1, 16, 64), float("nan"))), r"latents must be finite"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"], true_cfg_scale=2.0),
     r"negative_prompt has 3 entries for 2 prompts"),
    (dict(num_inference_steps=0), r"num_inference_steps must be an integer >= 1"),
])
def test_pipeline_refuses_before_any_transformer_call(watched, kwargs, match):
    pipe, called = watched
    with pytest.raises(ValueError, match=match):
        pipe(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, **kwargs})
    assert not called


# --- fuzzing -----------------------------------------------------------------------------------------------

FIELDS = ("steps", "ends", "up_ratio", "shifts", "noise_ratio", "base_shift")
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 12), st.booleans(),
                    st.none(), st.text(max_size=3))


@settings(max_examples=150, deadline=None)
@given(steps=st.one_of(st.tuples(numbers, numbers, numbers), numbers, st.lists(st.integers(1, 9), max_size=4)),
       ends=st.one_of(st.tuples(numbers, numbers, numbers), numbers),
       up_ratio=numbers, shifts=st.one_of(st.none(), st.tuples(numbers, numbers, numbers)),
       noise_ratio=numbers, base_shift=st.one_of(numbers, st.just("auto")))
def test_fuzz_config_either_names_a_field_or_gives_a_complete_schedule(steps, ends, up_ratio, shifts, noise_ratio,
                                                                      base_shift):
    try:
        config = RALUConfig(steps=steps, ends=ends, up_ratio=up_ratio, shifts=shifts, noise_ratio=noise_ratio,
                            base_shift=base_shift)
    except ValueError as error:
        assert any(str(error).startswith(f"{name} must") for name in FIELDS), str(error)
        return
    config = config.resolve(3.0)
    for stage in config.stages:
        assert all(math.isfinite(s) and 0 <= s <= 1 for s in stage.sigmas)
        assert math.isfinite(stage.alpha) and math.isfinite(stage.beta)


@pytest.fixture(scope="module")
def fuzz_pipe(tiny_flux_path):
    from ralu import RALUFluxPipeline

    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPELINE_PARAMETERS = ("height", "width", "guidance_scale", "num_images_per_prompt", "config", "true_cfg_scale",
                       "generator", "latents", "negative_prompt", "num_inference_steps")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.sampled_from([0, -32, 32, 48, 64, 96, 100]), width=st.sampled_from([32, 64, 80, 96]),
       guidance=st.sampled_from([0.0, 3.5, -1.0, float("nan"), float("inf")]), images=st.integers(0, 2),
       config=st.sampled_from(["flux-dev-7x", "flux-dev-9x", Baseline(2), None, 3]),
       true_cfg=st.sampled_from([1.0, 2.0, float("nan")]), negatives=st.sampled_from([None, "x", ["x", "y"]]))
def test_fuzz_pipeline_either_names_a_parameter_or_returns_finite_images(fuzz_pipe, height, width, guidance, images,
                                                                        config, true_cfg, negatives):
    kwargs = dict(prompt="a red circle", height=height, width=width, guidance_scale=guidance,
                  num_images_per_prompt=images, config=config if config is not None else Baseline(2),
                  true_cfg_scale=true_cfg, negative_prompt=negatives, output_type="np",
                  max_sequence_length=16)
    if isinstance(kwargs["config"], str):
        kwargs["config"] = RALUConfig.preset(kwargs["config"], steps=(1, 1, 1)) if kwargs["config"] in \
            RALUConfig.PRESETS else kwargs["config"]
    try:
        out = fuzz_pipe(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(name in message for name in (*PIPELINE_PARAMETERS, "preset", "prompt")), message
        assert "\n" not in message
        return
    assert out.images.shape == (images, height, width, 3) and (out.images == out.images).all()


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_the_maths_and_the_sampler_import_without_diffusers():
    """config, ntdm, schedule, noise, layout, regions, cost, models, planner, calibrate and the sampler
    never import diffusers (nor transformers); the pure-Python ones not even torch."""
    code = ("import sys; import ralu.config, ralu.ntdm, ralu.schedule, ralu.cost, ralu.models, ralu.planner, "
            "ralu.calibrate, ralu.reports; pure = 'torch' not in sys.modules; "
            "import ralu.noise, ralu.layout, ralu.regions, ralu.sampler; "
            "print(pure, [m for m in ('diffusers', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True []"
