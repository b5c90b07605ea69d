"""Tests of each model family's pipeline against the stock diffusers one, on tiny random-weight models."""

from __future__ import annotations

import torch


def gens(*seeds: int) -> list[torch.Generator]:
    """One CPU generator per seed, as a batch's ``generator=`` list."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def quiet(pipe):
    """The pipeline with its progress bar off (the tests' output stays readable)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load(path, cls, **kwargs):
    """``cls.from_pretrained(path, **kwargs)``, quiet."""
    return quiet(cls.from_pretrained(path, **kwargs))
