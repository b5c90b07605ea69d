"""Method specs and prompt sets."""

from __future__ import annotations

import json

import pytest

from ralu import Baseline, RALUConfig
from ralu.eval import methods, prompts


def test_method_kinds():
    base = methods.parse("baseline:50")
    assert base.kind == "baseline" and base.config == Baseline(50) and base.config.name == "baseline 50"
    assert methods.parse("steps:10").config.steps == 10
    preset = methods.parse("flux-dev-4x")
    assert preset.kind == "ralu" and preset.config.steps == RALUConfig.preset("flux-dev-4x").steps
    custom = methods.parse("ralu:5,6,7:0.3,0.45:0.3@noise_downsample=nearest")
    assert custom.config.steps == (5, 6, 7) and custom.config.ends == (0.3, 0.45, 1.0)
    assert custom.config.noise_downsample == "nearest" and custom.config.up_ratio == 0.3
    cached = methods.parse("flux-dev-7x+teacache=0.2")
    assert cached.cache == methods.CacheSpec("teacache", 0.2) and cached.config.name == "flux-dev-7x"
    assert methods.parse("flux-dev-7x+fbc").cache == methods.CacheSpec("fbc", 0.05)
    assert methods.parse("unipc:12").solver == "unipc" and methods.parse("unipc:12").toy_only
    hires = methods.parse("hires:5:0.3:9")
    assert hires.two_stage == methods.TwoStage(5, 0.3, 9, True) and not methods.parse("naive:5:0.3:9").two_stage.renoise
    refine = methods.parse("mrflow:40:0.3:1")
    assert refine.two_stage == methods.TwoStage(40, 1.0, 1, False, refine=0.3) and refine.toy_only
    assert methods.parse("plan:5").plan_target == 5.0
    assert methods.parse("flux-dev-4x+teacache").slug == "flux-dev-4x_teacache"


@pytest.mark.parametrize("spec, match", [
    ("baseline", r"write baseline:N"),
    ("steps:0", r"steps steps must be an integer >= 1"),
    ("flux-dev-9x", r"method must be baseline:N, steps:N, a preset"),
    ("flux-dev-4x+turbo", r"cache suffix must be one of"),
    ("ralu:5,6:0.3,0.45:0.3", r"three step counts and two stage ends"),
    ("hires:5:1.5:9", r"E1 must be in \(0, 1\)"),
    ("mrflow:40:1:1", r"S \(the refinement's noise level\) must be in \(0, 1\)"),
    ("mrflow:40:0.3", r"write mrflow:N1:S:N3"),
    ("steps:10@up_ratio=0.2", r"@options apply to RALU schedules only"),
    ("flux-dev-4x@colour=red", r"options after @ must be FIELD=VALUE"),
    ("flux-dev-4x@noise_downsample=mean", r"noise_downsample must be one of"),
])
def test_bad_method_specs_name_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        methods.parse(spec)


def test_duplicate_methods_are_refused():
    with pytest.raises(ValueError, match="listed twice"):
        methods.parse_all(["steps:10", "steps:10"])


def test_builtin_prompt_sets():
    geneval = prompts.load("geneval")
    assert len(geneval) == 500 and len({p.text for p in geneval}) > 450
    tags = {p.meta["tag"] for p in geneval}
    assert tags == {"single_object", "two_object", "counting", "colors", "color_attr", "position"}
    counting = next(p for p in geneval if p.meta["tag"] == "counting")
    assert counting.meta["include"][0]["count"] in (2, 3, 4)
    assert prompts.load("geneval:12") == geneval[:12] and len(prompts.load("quick")) == 16
    toy = prompts.load("toy:8")
    assert len(toy) == 8 and toy[0].meta == dict(tag="toy", scene_seed=2026, index=0)


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert [p.text for p in prompts.load(str(tmp_path / "p.txt"))] == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"caption": "a cow", "id": 3}) + "\n")
    loaded = prompts.load(str(tmp_path / "p.jsonl"))
    assert loaded[0].text == "a cow" and loaded[0].meta == {"id": 3}
    (tmp_path / "coco.json").write_text(json.dumps({"annotations": [{"caption": "a bus", "image_id": 1}]}))
    assert prompts.load(str(tmp_path / "coco.json"))[0].text == "a bus"
    (tmp_path / "bad.json").write_text(json.dumps([{"label": "x"}]))
    with pytest.raises(ValueError, match=r"'caption', 'prompt' or 'text' field"):
        prompts.load(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match=r"prompts must be geneval\[:N\]"):
        prompts.load("coco")


def test_a_pair_splits_at_the_equals_sign_that_leaves_two_method_specs():
    from ralu.cli import UsageError
    from ralu.eval.cli import split_pair

    assert split_pair("flux-dev-5x=steps:10") == ("flux-dev-5x", "steps:10")
    assert split_pair("flux-dev-4x@solver=ab2=steps:11") == ("flux-dev-4x@solver=ab2", "steps:11")
    assert split_pair("steps:11=flux-dev-4x@solver=unipc") == ("steps:11", "flux-dev-4x@solver=unipc")
    assert split_pair("flux-dev-4x+teacache=0.3=flux-dev-4x") == ("flux-dev-4x+teacache=0.3", "flux-dev-4x")
    with pytest.raises(UsageError, match="--pair must be FIRST=SECOND"):
        split_pair("flux-dev-4x")


def test_plot_series_join_one_variant_across_costs():
    from ralu.eval.report import series_label

    assert {series_label(s) for s in ("flux-dev-4x", "flux-dev-7x")} == {"RALU"}
    assert series_label("flux-dev-5x@solver=unipc") == series_label("flux-dev-7x@solver=unipc") == "RALU @solver=unipc"
    assert series_label("steps:11") == series_label("steps:6") != series_label("unipc:6")
    assert series_label("flux-dev-4x@solver=ab2+teacache=0.3") == "RALU @solver=ab2 +teacache=0.3"
    assert series_label("hires:5:0.3:10") == "hires-fix" and series_label("baseline:50") == "baseline"
    assert series_label("mrflow:40:0.3:1") == "MrFlow (refine), S=0.3" != series_label("mrflow:40:0.4:1")
    assert series_label("mrflow:40:0.3:1") == series_label("mrflow:20:0.3:1")
    # custom schedules draw their own line, not a zig-zag through the presets'
    assert series_label("ralu:10,4,5:0.45,0.6:0.2") == series_label("ralu:1,1,2:0.3,0.45:0.3") != "RALU"
