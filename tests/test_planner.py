"""The planner: candidates hit the target on the cost model, are ranked by the documented rule, and
impossible targets get the reachable range."""

from __future__ import annotations

import pytest

from ralu import Baseline, RALUConfig, models
from ralu.cli import main
from ralu.ntdm import ntdm_objective
from ralu.planner import GAP_WEIGHT, plan

pytestmark = pytest.mark.slow  # tens of NT-DM solves per plan


@pytest.fixture(scope="module")
def five():
    return plan(5.0, model="flux-dev", height=1024, width=1024)


def test_every_candidate_hits_the_target_on_the_cost_model(five):
    spec = models.get("flux-dev")
    base = spec.cost(Baseline(50), 1024, 1024)
    assert len(five.candidates) >= 10
    for c in five.candidates:
        # computed again from the model's end-to-end cost (transformer, decodes), not the planner's arrays
        assert base / spec.cost(c.config, 1024, 1024) == pytest.approx(c.flops_speedup, rel=1e-9)
        assert abs(c.flops_speedup / 5.0 - 1) <= 0.03
        cfg = c.config
        assert cfg.ends[0] <= 0.3 and 0.1 <= cfg.up_ratio <= 0.3 and cfg.ends[1] - cfg.ends[0] <= 0.2 + 1e-9


def test_candidates_are_ranked_by_ntdm_plus_the_stage_gap(five):
    h0 = models.get("flux-dev").stock_shift(4096, 50)
    scores = []
    for c in five.candidates:
        cfg = c.config
        js = ntdm_objective(cfg.shifts, cfg.noise_ratio, cfg.steps, cfg.ends, h0)
        assert js == pytest.approx(c.objective, abs=1e-15) and cfg.base_shift == pytest.approx(h0)
        scores.append(js + GAP_WEIGHT * (cfg.ends[1] - cfg.ends[0]))
    assert scores == sorted(scores)
    assert five.best == five.candidates[0].config


def test_the_best_plan_runs_through_a_pipeline_unchanged(five):
    # resolved for this model and size: the pipeline's resolve keeps it as it is
    spec = models.get("flux-dev")
    assert spec.resolve(five.best, 1024, 1024) == five.best
    assert RALUConfig.for_speedup(5.0) == five.best


@pytest.mark.parametrize("target, match", [
    (60.0, r"speedup 60x is out of reach for flux-dev at 1024x1024 against 50 baseline steps: the searched "
           r"schedules give 0\.\d+x to \d+\.\d+x"),
    (0.8, r"target speedup must be a finite number above 1"),
    (float("nan"), r"target speedup must be a finite number above 1"),
])
def test_impossible_targets_name_the_reachable_range(target, match):
    with pytest.raises(ValueError, match=match):
        plan(target)


def test_a_few_step_model_plans_against_its_own_baseline():
    result = plan(1.8, model="flux-schnell")
    assert result.baseline_steps == 4 and sum(result.best.steps) <= 6
    with pytest.raises(ValueError, match=r"out of reach for flux-schnell .* against 4 baseline steps"):
        plan(5.0, model="flux-schnell")


def test_cli_plan_prints_a_table_and_the_best_flags(capsys):
    assert main(["plan", "--speedup", "7", "--top", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:2].strip().isdigit()]
    assert len(rows) == 3 and "best: --steps" in out
    assert main(["plan", "--speedup", "100"]) == 2
    err = capsys.readouterr().err
    assert "out of reach" in err and len(err.strip().splitlines()) == 1
