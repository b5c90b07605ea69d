"""Closeness metrics (PSNR, SSIM, edge error) on image pairs whose answers are known in advance."""

from __future__ import annotations

import importlib

import dataclasses
import math

import numpy as np
import pytest

from ralu.demo import shapes  # noqa: E402

pytestmark = pytest.mark.slow  # in make test, not make test-fast


@pytest.fixture(scope="module")
def quality():
    return importlib.import_module("ralu.bench.closeness")


@pytest.fixture(scope="module")
def scene():
    return shapes.Scene((shapes.Shape("square", "red", "large", (0.35, 0.5), 0.2),
                         shapes.Shape("circle", "blue", "large", (0.75, 0.5), 0.18)), "left of", (0.7, 0.7))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")


def test_identical_images(quality, scene):
    image = shapes.render(scene, 64)
    assert quality.psnr(image, image) == math.inf
    assert quality.ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert quality.edge_error(image, image) == 0.0


def test_psnr_of_a_constant_offset(quality):
    # MSE = 0.1² = 0.01 on a [0, 1] range: PSNR = 10·log10(1 / 0.01) = 20 dB, up to float rounding
    reference = np.full((64, 64, 3), 0.5)
    assert quality.psnr(reference + 0.1, reference) == pytest.approx(20.0, abs=1e-9)


def test_shifted_objects_lower_every_score(quality, scene):
    reference = shapes.render(scene, 64)
    moved = dataclasses.replace(scene, objects=tuple(dataclasses.replace(o, center=(o.center[0] + 3 / 64, o.center[1]))
                                                     for o in scene.objects))
    shifted = shapes.render(moved, 64)
    assert quality.psnr(shifted, reference) < 25.0
    assert quality.ssim(shifted, reference) < 0.95
    # a 3 px shift moves every edge out of the 3 px wide band: the gradient error there is large
    assert quality.edge_error(shifted, reference) > 0.5


def test_blurred_edges_raise_the_edge_error_monotonically(quality, scene):
    reference = shapes.render(scene, 64)
    errors = [quality.edge_error(_blur(reference, sigma), reference) for sigma in (0.5, 1.0, 2.0)]
    assert 0.1 < errors[0] < errors[1] < errors[2]


def test_blocky_upsampling_raises_the_edge_error(quality, scene):
    # the 32 px render nearest-upsampled to 64 px: same content, 2 px stair-step edges
    reference = shapes.render(scene, 64)
    blocky = shapes.render(scene, 32).repeat(2, axis=0).repeat(2, axis=1)
    assert quality.edge_error(blocky, reference) > 0.1
    assert quality.psnr(blocky, reference) > 15.0  # mostly the same picture


def test_no_edges_gives_nan(quality):
    flat = np.full((64, 64, 3), 0.3)
    assert math.isnan(quality.edge_error(flat, flat))
