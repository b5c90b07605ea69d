"""The harness end to end on the toy model and a tiny FLUX pipeline: generate → score → report, resumable,
and the same images on one process as on two (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ralu.eval import generate, methods, prompts, score, stats
from ralu.eval.report import report
from ralu.eval.runners import PipelineRunner, ToyRunner

pytestmark = pytest.mark.slow  # pipelines run end to end: in make test, not make test-fast

METHODS = ["baseline:4", "steps:2", "ralu:1,1,2:0.3,0.45:0.3", "unipc:2", "hires:1:0.3:2", "mrflow:3:0.3:1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-eval")
    runner = ToyRunner()
    method_list = methods.parse_all(METHODS)
    generate.run(runner, method_list, prompts.toy_prompts(3), [0, 1], out, batch_size=4, say=lambda _: None)
    return out, runner


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_manifest_has_one_row_per_image_with_cost_and_versions(toy_run):
    out, runner = toy_run
    rows = _rows(out)
    assert len(rows) == len(METHODS) * 3 * 2
    assert [r["method"] for r in rows[::6]] == METHODS  # method order, then prompt, then seed
    first = rows[0]
    assert {"prompt", "seed", "height", "width", "model_calls", "flops", "wall_seconds", "peak_memory_mb",
            "versions", "path"} <= set(first) and first["versions"]["ralu"]
    # FLOPs against the cost model, computed independently: calls x branches x one call's FLOPs
    spec = runner.spec
    by = {r["method"]: r for r in rows}
    assert by["baseline:4"]["flops"] == pytest.approx(4 * 2 * spec.call_flops(256))
    assert by["steps:2"]["flops"] == pytest.approx(2 * 2 * spec.call_flops(256))
    ralu = by["ralu:1,1,2:0.3,0.45:0.3"]
    assert ralu["model_calls"] == 4 and ralu["flops"] == pytest.approx(
        2 * (spec.call_flops(64) + spec.call_flops(64 - 19 + 4 * 19) + 2 * spec.call_flops(256)))
    assert by["hires:1:0.3:2"]["flops"] == pytest.approx(2 * (spec.call_flops(64) + 2 * spec.call_flops(256)))
    assert by["mrflow:3:0.3:1"]["flops"] == pytest.approx(2 * (3 * spec.call_flops(64) + spec.call_flops(256)))
    for r in rows:
        with Image.open(out / r["path"]) as image:
            assert image.size == (64, 64)


def test_every_caption_gets_its_own_noise_and_every_method_the_same(toy_run):
    """One seed for all captions must not mean one noise for all: the manifest's noise seed differs by caption,
    is shared by the methods, and is the seed the image was drawn with."""
    out, runner = toy_run
    rows = _rows(out)
    for r in rows:
        assert r["noise_seed"] == generate.noise_seed(r["prompt_index"], r["seed"])
    assert len({r["noise_seed"] for r in rows if r["method"] == "baseline:4"}) == 6  # 3 captions x 2 seeds
    row = next(r for r in rows if r["method"] == "baseline:4" and r["prompt_index"] == 2 and r["seed"] == 1)
    saved = np.asarray(Image.open(out / row["path"])).astype(int)
    # alone rather than in a batch of 4, float sums round differently: within 3 of 255 per pixel, against tens
    # for the image of another noise (the bare seed, as before every caption got its own)
    (right, wrong), _ = runner.generate(methods.parse(row["method"]), [row["prompt"]] * 2,
                                        [row["noise_seed"], row["seed"]])
    assert np.abs(right.astype(int) - saved).max() <= 3 and np.abs(wrong.astype(int) - saved).mean() > 10


def test_the_mrflow_method_runs_the_refine_recipe(toy_run):
    """The runner hands mrflow:N1:S:N3 to the refine recipe (not to the hires-fix one), with the image's noise."""
    from ralu.demo import model as toy
    from ralu.demo.images import to_uint8
    from ralu.eval.alternatives import refine_sample

    out, runner = toy_run
    row = next(r for r in _rows(out) if r["method"] == "mrflow:3:0.3:1" and r["prompt_index"] == 1)
    saved = np.asarray(Image.open(out / row["path"])).astype(int)
    grid, seeds = toy.token_grid(64), [row["noise_seed"]]
    with torch.no_grad():
        adapter = runner.model.adapter([row["prompt"]], runner.guidance, grid)
        tokens = refine_sample(adapter, toy.initial_noise(seeds, 64), grid, 3, 0.3, 1, toy.BASE_SHIFT,
                               toy.renoise_generators(seeds))
    image = to_uint8(toy.decode_tokens(tokens, grid))[0].astype(int)
    assert np.abs(image - saved).max() <= 3  # a batch of 4 against one: float sums round differently


def test_a_rerun_generates_nothing_and_a_lost_image_comes_back_identical(toy_run):
    out, runner = toy_run
    calls = []

    class Counting:
        name, size, spec = runner.name, runner.size, runner.spec

        def generate(self, method, p, s):
            calls.append(method.spec)
            return runner.generate(method, p, s)

    method_list = methods.parse_all(METHODS)
    before = (out / "manifest.jsonl").read_text()
    generate.run(Counting(), method_list, prompts.toy_prompts(3), [0, 1], out, batch_size=4, say=lambda _: None)
    assert calls == [] and (out / "manifest.jsonl").read_text() == before
    lost = out / _rows(out)[7]["path"]
    pixels = np.asarray(Image.open(lost))
    lost.unlink()
    generate.run(Counting(), method_list, prompts.toy_prompts(3), [0, 1], out, batch_size=4, say=lambda _: None)
    assert calls == ["steps:2"] and np.array_equal(np.asarray(Image.open(lost)), pixels)


def test_scores_summary_and_report(toy_run):
    out, runner = toy_run
    from ralu.demo.shapes import check_prompt, parse_caption
    from skimage.metrics import peak_signal_noise_ratio

    summary = score.score(out, ["toy_readback", "toy_edges", "psnr"], pairs=[("steps:2", "unipc:2")],
                          say=lambda _: None)
    assert summary["reference"] == "baseline:4"
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    ref = {(r["prompt_index"], r["seed"]): r for r in rows if r["method"] == "baseline:4"}
    for r in rows[6:12]:
        image = np.asarray(Image.open(out / r["path"]))
        expected = check_prompt(image.astype(np.float32) / 255, parse_caption(r["prompt"]))
        assert r["scores"]["toy_readback.all"] == expected["all"]
        reference = np.asarray(Image.open(out / ref[(r["prompt_index"], r["seed"])]["path"]))
        assert r["scores"]["psnr"] == pytest.approx(peak_signal_noise_ratio(reference, image, data_range=255))
    steps = summary["methods"]["steps:2"]
    assert steps["speedup"] == pytest.approx(2.0) and steps["images"] == 6
    assert steps["scores"]["toy_readback.all"]["n"] == 6
    assert summary["pairs"][0]["differences"]["psnr"]["n"] == 6
    path = report(out, title="toy")
    text = path.read_text()
    assert "| `steps:2` | 2 |" in text and "2.00x" in text and "Paired differences" in text
    assert (out / "quality_vs_speedup.png").stat().st_size > 5000
    # a second scoring run with another metric (another environment, say) keeps the first one's scores
    again = score.score(out, ["ssim"], say=lambda _: None)
    assert {"toy_readback.all", "psnr", "ssim"} <= set(again["metrics"])


def test_set_metrics_against_the_reference_and_the_rendered_truth(toy_run, monkeypatch):
    out, _ = toy_run
    from ralu.eval import metrics

    # a stand-in feature space (mean colour and contrast: 4-d, fewer dimensions than the 6 images per
    # method, so that the covariances are full rank) keeps this test independent of the shipped judge
    def colour(images):
        x = np.asarray(images, float) / 255
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2, 3))[:, None]], axis=1)

    monkeypatch.setitem(metrics.REGISTRY, "toy_fid", lambda: metrics.Metric(
        "toy_fid", "set", False, (), "", lambda: metrics.set_metrics(colour)))
    summary = score.score(out, ["toy_fid"], say=lambda _: None)
    ref = summary["methods"]["baseline:4"]["sets"]["toy_fid"]
    assert abs(ref["vs_reference"]["fid"]) < 1e-6 and "vs_truth" in ref  # the reference against itself
    assert summary["methods"]["steps:2"]["sets"]["toy_fid"]["vs_reference"]["fid"] > 1e-3
    # paired: KID of each method's full set against the truth of the same captions, differenced
    paired = score.score(out, ["toy_fid"], pairs=[("steps:2", "unipc:2")], say=lambda _: None)
    difference = paired["pairs"][0]["differences"]["set:toy_fid/kid/vs_truth"]
    rows = _rows(out)
    first, second = ([r for r in rows if r["method"] == m] for m in ("steps:2", "unipc:2"))
    assert [(r["prompt_index"], r["seed"]) for r in first] == [(r["prompt_index"], r["seed"]) for r in second]
    load = lambda group: np.stack([np.asarray(Image.open(out / r["path"]).convert("RGB")) for r in group])  # noqa: E731
    truth = colour(score._truth(first))
    expected = stats._mmd2(colour(load(first)), truth) - stats._mmd2(colour(load(second)), truth)
    assert difference["n"] == 6 and difference["mean"] == pytest.approx(expected) and difference["se"] > 0
    assert "toy_fid KID vs truth" in report(out, title="toy").read_text()
    monkeypatch.setattr(score, "SET_MINIMUM", 7)  # 6 images per method: one short, refused before any feature
    monkeypatch.setitem(metrics.REGISTRY, "toy_fid", lambda: metrics.Metric(
        "toy_fid", "set", False, (), "", lambda: pytest.fail("features computed for a refused set metric")))
    with pytest.raises(ValueError, match="toy_fid .* at least 7 images per method; the smallest method here has 6"):
        score.score(out, ["toy_fid"], say=lambda _: None)


@pytest.mark.slow
def test_two_processes_give_the_single_process_images(toy_run, tmp_path):
    """torchrun with 2 CPU processes (gloo): the merged manifest and every image equal the 1-process run."""
    out, _ = toy_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29611"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ralu.cli", "eval",
               "generate", "toy", "--methods", *METHODS, "--prompts", "toy:3", "--seeds", "0,1", "--batch-size", "4",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[1/2]" in done.stdout and "[2/2]" in done.stdout
    single, double = _rows(out), _rows(tmp_path)
    assert not list(tmp_path.glob("manifest.rank*.jsonl"))
    key = lambda r: (r["method"], r["prompt_index"], r["seed"], r["model_calls"], r["flops"], r["path"])  # noqa: E731
    assert [key(r) for r in double] == [key(r) for r in single]
    for r in single:
        assert np.array_equal(np.asarray(Image.open(out / r["path"])), np.asarray(Image.open(tmp_path / r["path"])))


def test_a_tiny_flux_pipeline_through_the_harness(tiny_flux_path, tmp_path):
    from dataclasses import replace
    from types import MappingProxyType

    from ralu import RALUFluxPipeline, models

    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    pipe.set_progress_bar_config(disable=True)
    spec = replace(models.get("flux-dev"), transformer=MappingProxyType(dict(pipe.transformer.config)), text_tokens=16)
    runner = PipelineRunner(pipe, spec, (64, 64), dict(max_sequence_length=16), name="tiny-flux")
    method_list = methods.parse_all(["baseline:4", "flux-dev-7x", "flux-dev-7x+fbc=0.5"])
    generate.run(runner, method_list, prompts.load("quick:2"), [0], tmp_path, batch_size=2, say=lambda _: None)
    rows = _rows(tmp_path)
    assert [r["model_calls"] for r in rows] == [4, 4, 10, 10, 10, 10]
    by = {r["method"]: r for r in rows}
    assert by["flux-dev-7x"]["flops"] == pytest.approx(spec.cost(method_list[1].config, 64, 64))
    assert by["flux-dev-7x+fbc=0.5"]["flops"] < by["flux-dev-7x"]["flops"]  # the cache skipped calls
    assert sum(by["flux-dev-7x+fbc=0.5"]["skipped"]) > 0
    with pytest.raises(ValueError, match="runs on the toy model only"):
        runner.generate(methods.parse("unipc:4"), ["a cat"], [0])
