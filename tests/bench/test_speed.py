"""The speed benchmark's arithmetic on fake timings: paired speedups, the three efficiencies, in-run calls."""

from __future__ import annotations

import json

import pytest

from ralu import Baseline, RALUConfig
from ralu.bench.speed import in_run_calls, markdown, prediction_errors, summarise
from ralu.bench.speed import main as speed_main
from ralu.calibrate import LatencyModel

FULL = 1024


def latency(scale: float) -> LatencyModel:
    """A host whose calls take ``scale`` times a fixed curve (a slower or faster moment of the same host)."""
    tokens = (256, 409, 1024)
    return LatencyModel(tokens, tuple(scale * (0.5 + t / 512) for t in tokens), "fake", "cpu", "float32", 128)


def methods() -> dict:
    return {"baseline": Baseline(20, shift=3.0), "flux-dev-4x": RALUConfig.preset("flux-dev-4x").resolve(3.0)}


def test_same_repetition_calibration_removes_the_host_drift():
    """The host runs 1x, 1.5x and 0.8x as slow in three repetitions; RALU always takes 10% longer than its
    calls predict. Against each repetition's own calibration the efficiency is exactly 1/1.1 every time;
    against the one calibration made before, it is too."""
    drift = (1.0, 1.5, 0.8)
    per_rep = [latency(d) for d in drift]
    m = methods()
    times = {"baseline": [lat.schedule_seconds(m["baseline"], FULL) for lat in per_rep],
             "flux-dev-4x": [1.1 * lat.schedule_seconds(m["flux-dev-4x"], FULL) for lat in per_rep]}
    rows = summarise(m, times, {"baseline": 1.0, "flux-dev-4x": 4.0}, latency(1.0), per_rep, FULL)
    row = rows["flux-dev-4x"]
    predicted = latency(1.0).speedup(m["flux-dev-4x"], m["baseline"], FULL)
    assert row["predicted_speedup"] == pytest.approx(predicted)
    assert row["measured_speedup"] == pytest.approx(predicted / 1.1)
    assert row["efficiency_same_rep"] == pytest.approx(1 / 1.1)
    assert row["efficiency_same_rep_range"] == pytest.approx((1 / 1.1, 1 / 1.1))
    assert row["efficiency_predicted"] == pytest.approx(1 / 1.1)
    assert row["efficiency_flops"] == pytest.approx(predicted / 1.1 / 4.0)
    assert rows["baseline"]["efficiency_same_rep"] == pytest.approx(1.0)


def test_speedups_are_paired_by_repetition():
    """The host is 3x slower from the middle of repetition 2 on: the baseline of repetitions 2-3 and RALU of
    repetition 3 are slowed. Paired ratios give the true speedup in two repetitions of three (median exact);
    a ratio of unpaired medians would say 3x too much."""
    m = methods()
    per_rep = [latency(1.0)] * 3
    base = per_rep[0].schedule_seconds(m["baseline"], FULL)
    ralu = per_rep[0].schedule_seconds(m["flux-dev-4x"], FULL)
    times = {"baseline": [base, 3 * base, 3 * base], "flux-dev-4x": [ralu, ralu, 3 * ralu]}
    row = summarise(m, times, {"baseline": 1.0, "flux-dev-4x": 4.0}, per_rep[0], per_rep, FULL)["flux-dev-4x"]
    assert row["measured_speedup"] == pytest.approx(base / ralu)
    assert row["measured_range"] == pytest.approx((base / ralu, 3 * base / ralu))
    assert row["efficiency_same_rep"] == pytest.approx(1.0)


def test_in_run_calls_divide_each_stage_by_its_calls_and_its_calibrated_call():
    config = methods()["flux-dev-4x"]
    per_rep = [latency(1.0), latency(2.0)]
    low, mixed, full = config.tokens_per_stage(FULL)
    stage_seconds = [(5 * 1.2 * lat.call_seconds(low), 6 * lat.call_seconds(mixed), 7 * lat.call_seconds(full))
                     for lat in per_rep]
    stages = in_run_calls(config, stage_seconds, per_rep, FULL)
    assert [s["tokens"] for s in stages] == [low, mixed, full] and [s["calls"] for s in stages] == [5, 6, 7]
    assert [s["ratio"] for s in stages] == pytest.approx([1.2, 1.0, 1.0])
    assert stages[2]["in_run_s"] == pytest.approx(1.5 * latency(1.0).call_seconds(full))  # median of 1x and 2x


def test_prediction_errors_summarise_the_ralu_rows_only():
    record = {"sizes": [{"methods": {"baseline": dict(efficiency_predicted=0.5, efficiency_same_rep=0.5),
                                     "a": dict(efficiency_predicted=0.9, efficiency_same_rep=1.02),
                                     "b": dict(efficiency_predicted=1.05, efficiency_same_rep=0.98)}}]}
    text = prediction_errors(record)
    assert "calibrated once: largest 10.0%, mean 7.5%" in text
    assert "same repetition: largest 2.0%, mean 2.0%" in text


def record(gpu: str | None, device: str | None) -> dict:
    """A one-size record as `ralu bench speed` writes it, from the fake latencies above."""
    m = methods()
    per_rep = [latency(1.0)] * 3
    times = {name: [per_rep[0].schedule_seconds(config, FULL) * f for f in (1.0, 1.1, 0.9)] for name, config in m.items()}
    rows = summarise(m, times, {"baseline": 1.0, "flux-dev-4x": 4.0}, per_rep[0], per_rep, FULL)
    out = dict(command="ralu bench speed", host=dict(cpu="Fake CPU", gpu=gpu, threads=2, torch="x"), dtype="bfloat16",
               blocks=[19, 38], sizes=[dict(px=512, methods=rows)], overheads_s={"noise": 0.001})
    if device is not None:
        out["device"] = device
    return out


@pytest.mark.parametrize("gpu, device, on", [("NVIDIA H200", "cuda", True), ("NVIDIA H200", None, True),
                                             ("NVIDIA H200", "cpu", False), (None, "cpu", False)])
def test_the_page_says_it_is_a_gpu_run_only_when_it_was_timed_on_one(gpu, device, on):
    text = markdown(record(gpu, device))
    assert ("This page is a GPU run (NVIDIA H200)" in text) is on
    assert ("--double 19 --single 38 --dtype bfloat16" in text) is not on  # the recipe, on CPU pages
    assert "No GPU was available" not in text


def test_render_rewrites_the_page_from_its_json_and_refuses_an_older_record(tmp_path, capsys):
    data = record("NVIDIA H200", "cuda")
    (tmp_path / "performance.json").write_text(json.dumps(data))
    assert speed_main(["--render", str(tmp_path)]) == 0
    page = (tmp_path / "performance.md").read_text()
    row = data["sizes"][0]["methods"]["flux-dev-4x"]
    assert f"| 512 | flux-dev-4x | 18 | {row['median_s']:.2f} | {row['measured_speedup']:.2f}x |" in page
    assert (tmp_path / "efficiency.png").stat().st_size > 1000
    del data["sizes"][0]["methods"]["flux-dev-4x"]["measured_range"]
    (tmp_path / "performance.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        speed_main(["--render", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--render: " in err and "predates the field 'measured_range'" in err
