"""benchmarks/sd3_positions.py: the velocity-error measurement's invariants on an untrained SD3 toy."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("skimage")

from ralu.demo import model as toy  # noqa: E402

pytestmark = pytest.mark.slow  # in make test, not make test-fast


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("ralu.bench.positions")


def test_velocity_errors_agree_where_conventions_coincide(bench):
    model = toy.build_toy(1, "sd3")
    model.transformer.eval()
    errors = bench.velocity_errors(model, count=3, up_ratio=0.3, batch=2)
    sigmas = [f"{s:g}" for s in bench.SIGMAS]
    assert len(errors["stage 1 · low_grid"]["per_scene"]) == 3
    for s in sigmas:
        # low_grid's stage 1 is the stock half-resolution forward
        assert errors["stage 1 · low_grid"][s]["mean"] == pytest.approx(errors["stage 1 · stock"][s]["mean"], rel=1e-6)
        # stock_then_full's stage 2 is full_grid's
        for part in ("kept", "children"):
            assert errors[f"stage 2 {part} · stock_then_full"][s]["mean"] == pytest.approx(
                errors[f"stage 2 {part} · full_grid"][s]["mean"], rel=1e-6)
    # where the conventions really differ, so do the errors
    assert errors["stage 1 · full_grid"]["mean"]["mean"] != pytest.approx(errors["stage 1 · low_grid"]["mean"]["mean"])
    assert errors["stage 2 kept · full_grid"]["mean"]["mean"] != pytest.approx(
        errors["stage 2 kept · low_grid"]["mean"]["mean"])


def test_refuses_a_flux_toy(bench, tmp_path):
    with pytest.raises(ValueError, match="SD3-architecture toy"):
        bench.run(tmp_path, scenes=1, prompts=1, seeds=1, threads=1, model_folder=toy.DATA_DIR)


@pytest.mark.slow
def test_cli_runs_the_whole_benchmark_on_a_saved_sd3_toy(tmp_path, capsys):
    from ralu.cli import main

    toy.save_toy(toy.build_toy(2, "sd3"), tmp_path / "model")
    out = tmp_path / "out"
    assert main(["bench", "positions", "--model", str(tmp_path / "model"), "--out", str(out), "--scenes", "2",
                 "--prompts", "1", "--seeds", "1", "--threads", "1"]) == 0
    text = (out / "sd3_positions.md").read_text()
    for name in ("baseline 28", "low_grid (sd3-3x)", "stock_then_full (sd3-2x)", "full_grid center (sd3-3x)",
                 "stage 2 children · stock", "images (sd3-3x): full_grid − low_grid"):
        assert name in text
    assert (out / "sd3_positions.json").is_file() and (out / "sd3_positions_examples.png").is_file()
