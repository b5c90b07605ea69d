"""Tiny real-class FLUX pipelines, saved and reloaded so the loading path is the real one."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: ``benchmarks/<name>.py`` of this checkout as a module (benchmarks are not installed)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"ralu_{name}_benchmark", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_flux_path(tmp_path_factory):
    from ralu.tiny import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux"), seed=0)


@pytest.fixture(scope="session")
def flux_pipe(tiny_flux_path):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ralu_pipe(flux_pipe):
    from ralu import RALUFluxPipeline

    pipe = RALUFluxPipeline.from_pipe(flux_pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def prompt_embeds(ralu_pipe):
    """(embeds (2, T, 32), pooled (2, 32)) for two different prompts."""
    embeds, pooled, _ = ralu_pipe.encode_prompt(["a red circle left of a blue square", "a yellow star"], None,
                                                max_sequence_length=16)
    return embeds, pooled
