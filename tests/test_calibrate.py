"""The latency model: exact maths on fake timings, saving and loading, the planner's time objective, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType

import pytest

from ralu import Baseline, RALUConfig, calibrate, models
from ralu.calibrate import LatencyModel
from ralu.cli import main


def fake(points=((64, 1.0), (256, 2.0), (1024, 10.0))) -> LatencyModel:
    tokens, seconds = zip(*points)
    return LatencyModel(tokens, seconds, "flux-dev", "cpu", "float32", 512)


def test_interpolation_and_extrapolation_are_piecewise_linear():
    model = fake()
    assert model.call_seconds(64) == 1.0 and model.call_seconds(1024) == 10.0
    assert model.call_seconds(160) == pytest.approx(1.5)  # halfway between 64 and 256
    assert model.call_seconds(2048) == pytest.approx(10.0 + 8.0 / 768 * 1024)  # the last segment's slope
    assert model.call_seconds(32) == pytest.approx(1.0 - 1.0 / 192 * 32)


def test_schedule_time_and_speedup_sum_the_stage_calls():
    model = fake()
    config = RALUConfig.preset("flux-dev-4x")
    low, mixed, full = config.tokens_per_stage(1024)
    expected = 5 * model.call_seconds(low) + 6 * model.call_seconds(mixed) + 7 * model.call_seconds(full)
    assert model.schedule_seconds(config, 1024) == pytest.approx(expected)
    assert model.schedule_seconds(config, 1024, branches=2) == pytest.approx(2 * expected)
    assert model.speedup(config, Baseline(20), 1024) == pytest.approx(20 * 10.0 / expected)


def test_save_load_round_trip_and_bad_files(tmp_path):
    model = fake()
    path = model.save(tmp_path / "c.json")
    assert LatencyModel.load(path) == model
    (tmp_path / "bad.json").write_text(json.dumps({"tokens": [1]}))
    with pytest.raises(ValueError, match="is not a ralu latency calibration"):
        LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="run `ralu bench calibrate` first"):
        LatencyModel.load(tmp_path / "none.json")
    with pytest.raises(ValueError, match="tokens must increase strictly"):
        LatencyModel((4, 2), (1.0, 2.0), "m", "cpu", "float32", 1)


def test_time_calls_reports_median_and_spread_of_a_fake_clock(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 3.0, 3.0, 4.5, 10.0, 20.0, 20.0, 30.0, 30.0, 41.0])
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: next(ticks))
    runs = []
    medians, spreads = calibrate.time_calls(runs.append, [8, 16], reps=3, warmup=1)
    assert runs == [8, 8, 8, 8, 16, 16, 16, 16]
    assert medians == [1.5, 10.0] and spreads == [pytest.approx(1.0 / 1.5), pytest.approx(1.0 / 10.0)]


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_calibrate_times_a_model_of_the_given_width(monkeypatch):
    tiny = replace(models.get("flux-dev"), name="tiny", text_tokens=8, transformer=MappingProxyType(dict(
        num_attention_heads=2, attention_head_dim=16, joint_attention_dim=32)))
    latency = calibrate.calibrate(tiny, tokens=(16, 4, 64), blocks=(1, 1), reps=1)
    assert latency.tokens == (4, 16, 64) and len(latency.seconds) == 3 and latency.model == "tiny"
    assert {"cpu", "avx512_bf16", "amx_bf16", "threads", "torch"} <= set(latency.host)


@pytest.mark.slow
def test_the_planner_optimises_predicted_time():
    latency = fake(((64, 2.0), (300, 3.0), (1024, 6.0), (4096, 30.0)))
    from ralu.planner import plan

    result = plan(5.0, objective="time", latency=latency)
    spec = models.get("flux-dev")
    for c in result.candidates:
        expected = latency.speedup(c.config, Baseline(50), 4096)
        assert c.time_speedup == pytest.approx(expected) and abs(c.time_speedup / 5.0 - 1) <= 0.03
        assert c.flops_speedup == pytest.approx(spec.cost(Baseline(50), 1024, 1024) / spec.cost(c.config, 1024, 1024))
    with pytest.raises(ValueError, match="objective 'time' needs a latency calibration"):
        plan(5.0, objective="time")


def test_schedule_and_plan_pick_up_a_saved_calibration(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RALU_CACHE", str(tmp_path))
    fake(((64, 2.0), (1024, 6.0), (4096, 30.0))).save(calibrate.default_path("flux-dev"))
    assert main(["schedule", "--preset", "flux-dev-4x"]) == 0
    out = capsys.readouterr().out
    assert "predicted latency speedup" in out and "calibrated for flux-dev on cpu" in out
    assert main(["schedule", "--preset", "flux-dev-4x", "--no-calibration"]) == 0
    assert "predicted latency" not in capsys.readouterr().out
