from __future__ import annotations

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ralu.schedule import shift_sigmas, stage_sigmas, unshift_sigmas


@pytest.mark.parametrize("steps, mu", [(28, 1.15), (50, 0.5), (4, 0.0)])
def test_full_stage_matches_stock_scheduler(steps, mu):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = stage_sigmas(0.0, 1.0, steps, float(np.exp(mu)))
    # the scheduler shifts in float32; ours is float64: agreement to float32 rounding
    np.testing.assert_allclose(ours, scheduler.sigmas.numpy(), atol=2e-7)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.2, 10.0), st.floats(0.0, 1.0))
def test_shift_inverse(shift, sigma):
    assert shift_sigmas(np.asarray(unshift_sigmas(sigma, shift)), shift) == pytest.approx(sigma, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 0.8), st.floats(0.05, 0.2), st.integers(1, 20), st.floats(0.5, 10.0))
def test_stage_runs_between_its_progresses(start, length, steps, shift):
    end = start + length
    sigmas = stage_sigmas(start, end, steps, shift)
    assert len(sigmas) == steps + 1
    assert sigmas[0] == pytest.approx(1 - start, abs=1e-12) and sigmas[-1] == pytest.approx(1 - end, abs=1e-12)
    assert np.all(np.diff(sigmas) < 0)
