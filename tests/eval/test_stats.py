"""Distribution distances and paired statistics with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ralu.eval import stats


def gaussian(n, d=8, shift=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(shift, scale, size=(n, d))


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    a = gaussian(400)
    value, se = stats.fid(a, a)
    assert abs(value) < 1e-6 and se >= 0
    near, _ = stats.fid(gaussian(400, seed=1), gaussian(400, seed=2))
    far, far_se = stats.fid(gaussian(400, seed=1), gaussian(400, shift=1.0, seed=2))
    # a mean shift of 1 in each of 8 dimensions adds |Δμ|² = 8 to the Fréchet distance
    assert near < 1.0 and far == pytest.approx(8.0 + near, abs=1.0) and far > near + 5 * far_se


def test_fid_of_gaussians_matches_the_closed_form():
    # N(0, I) against N(0, 4I) in d dimensions: tr(I + 4I - 2·2I) = d
    d = 4
    a, b = gaussian(20000, d, seed=3), gaussian(20000, d, scale=2.0, seed=4)
    value, _ = stats.fid(a, b, bootstrap=2)
    assert value == pytest.approx(d, rel=0.05)


def test_kid_is_near_zero_for_the_same_distribution_and_positive_for_a_shift():
    same, same_se = stats.kid(gaussian(300, seed=5), gaussian(300, seed=6), subset_size=100)
    shifted, shifted_se = stats.kid(gaussian(300, seed=5), gaussian(300, shift=0.5, seed=6), subset_size=100)
    assert abs(same) < 3 * same_se + 1e-3  # unbiased: zero within noise
    assert shifted > 10 * shifted_se and shifted > same


def test_precision_and_recall_on_constructed_cases():
    real = gaussian(300, 2, seed=7)
    # fakes collapsed onto part of the real support: precise, poor recall
    collapsed = real[real[:, 0] > 0.5][:100] + 1e-3
    precision, recall = stats.precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.5
    # fakes far away: neither
    precision, recall = stats.precision_recall(real, gaussian(300, 2, shift=8.0, seed=8))
    assert precision == 0.0 and recall == 0.0
    # the same distribution: both high
    precision, recall = stats.precision_recall(real, gaussian(300, 2, seed=9))
    assert precision > 0.8 and recall > 0.8


def test_mean_se_and_paired_difference():
    assert stats.mean_se([1.0, 2.0, 3.0, None, float("nan")]) == dict(mean=2.0, se=pytest.approx(1 / math.sqrt(3)), n=3)
    d = stats.paired_difference([1.0, 2.0, None, 5.0], [0.5, 1.0, 3.0, float("inf")])
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.75)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="same width"):
        stats.fid(gaussian(10, 3), gaussian(10, 4))
    with pytest.raises(ValueError, match="more than 3 images"):
        stats.precision_recall(gaussian(3), gaussian(10))


def test_kid_difference_is_the_full_set_kid_difference_with_a_brute_force_jackknife():
    truth, a, b = gaussian(40, seed=1), gaussian(40, shift=0.3, seed=2), gaussian(40, seed=3)
    result = stats.kid_difference(a, b, truth)
    assert result["n"] == 40
    assert result["mean"] == pytest.approx(stats._mmd2(a, truth) - stats._mmd2(b, truth), rel=1e-10)
    keep = [np.delete(np.arange(40), i) for i in range(40)]
    theta = np.array([stats._mmd2(a[k], truth[k]) - stats._mmd2(b[k], truth[k]) for k in keep])
    expected = math.sqrt(39 / 40 * ((theta - theta.mean()) ** 2).sum())
    assert result["se"] == pytest.approx(expected, rel=1e-9)


def test_kid_difference_separates_a_shifted_set_and_not_a_second_sample():
    truth = gaussian(200, seed=1)
    same = stats.kid_difference(gaussian(200, seed=2), gaussian(200, seed=3), truth)
    assert abs(same["mean"]) < 2 * same["se"]
    shifted = stats.kid_difference(gaussian(200, shift=0.5, seed=2), gaussian(200, seed=3), truth)
    assert shifted["mean"] > 4 * shifted["se"] > 0
    identical = stats.kid_difference(truth + 1, truth + 1, truth)
    assert identical["mean"] == 0 and identical["se"] == 0
    with pytest.raises(ValueError, match="three matched sets"):
        stats.kid_difference(truth[:10], truth[:9], truth[:10])


def test_kid_jackknife_is_the_full_set_kid_with_a_brute_force_two_sample_jackknife():
    a, b = gaussian(30, seed=1), gaussian(25, shift=0.3, seed=2)
    value, se = stats.kid_jackknife(a, b)
    assert value == pytest.approx(stats._mmd2(a, b), rel=1e-10)
    without_a = np.array([stats._mmd2(np.delete(a, i, 0), b) for i in range(30)])
    without_b = np.array([stats._mmd2(a, np.delete(b, j, 0)) for j in range(25)])
    expected = math.sqrt(29 / 30 * ((without_a - without_a.mean()) ** 2).sum()
                         + 24 / 25 * ((without_b - without_b.mean()) ** 2).sum())
    assert se == pytest.approx(expected, rel=1e-9)


def test_kid_jackknife_se_covers_the_spread_between_independent_samples():
    """Over 40 pairs of independent samples of one distribution, the KIDs spread as the jackknife SE says
    (within a factor 1.5), where the SE over random subsets is several times smaller."""
    values, ses, subset_ses = [], [], []
    for seed in range(40):
        a, b = gaussian(60, seed=2 * seed), gaussian(60, shift=0.3, seed=2 * seed + 1)
        value, se = stats.kid_jackknife(a, b)
        values.append(value)
        ses.append(se)
        subset_ses.append(stats.kid(a, b, subset_size=30)[1])
    spread, typical = np.std(values, ddof=1), np.mean(ses)
    assert typical / 1.5 < spread < typical * 1.5, (spread, typical)
    assert np.mean(subset_ses) < spread / 2
