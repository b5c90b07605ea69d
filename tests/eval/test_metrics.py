"""Metric wiring: a tiny random CLIP (given as torchmetrics' callable), fakes for the scorers that need downloaded
weights, the error messages for missing extras, and the toy's edge measures on constructed pictures."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from ralu.eval import metrics


def _tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from ralu.testing.flux_sd3 import _clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=40, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=2),
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_attention_heads=4, num_hidden_layers=2), projection_dim=16)
    model = CLIPModel(config).eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _clip_tokenizer(Path(folder))
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer)
    return model, processor


def test_clip_score_equals_the_cosine_of_the_embeddings_times_100():
    model, processor = _tiny_clip()
    score = metrics.clip_score(lambda: (model, processor))
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    prompts = ["a red circle", "a blue square", "the yellow star"]
    got = score(images, prompts)
    with torch.no_grad():
        inputs = processor(text=prompts, images=[torch.from_numpy(i).permute(2, 0, 1) for i in images],
                           return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        cos = torch.nn.functional.cosine_similarity(img, txt)
    expected = (100 * cos).clamp(min=0).tolist()
    assert got == pytest.approx(expected, abs=1e-3)


def test_image_reward_wiring_with_a_fake_package(monkeypatch):
    seen = []

    class Fake:
        def score(self, prompt, images):
            seen.append((prompt, images[0].size))
            return len(prompt) / 10

    fake = types.ModuleType("ImageReward")
    fake.load = lambda name: Fake() if name == "ImageReward-v1.0" else None
    monkeypatch.setitem(sys.modules, "ImageReward", fake)
    metric = metrics.REGISTRY["imagereward"]()
    monkeypatch.setattr(metric, "check", lambda: None)
    values = metric.fn()([np.zeros((16, 24, 3), np.uint8)] * 2, ["a cat", "a red bus"])
    assert values == [0.5, 0.9] and seen == [("a cat", (24, 16)), ("a red bus", (24, 16))]


def test_pyiqa_wiring_with_a_fake_package(monkeypatch):
    created = []

    def create_metric(name):
        created.append(name)
        return lambda x: x.mean(dim=(1, 2, 3))  # (B, 3, H, W) in [0, 1]

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    metric = metrics.REGISTRY["niqe"]()
    monkeypatch.setattr(metric, "check", lambda: None)
    values = metric.fn()([np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8)], ["", ""])
    assert created == ["niqe"] and values == [1.0, 0.0] and not metric.higher


@pytest.mark.parametrize("name, package, extra", [("imagereward", "ImageReward", "imagereward"),
                                                   ("clipiqa", "pyiqa", "iqa")])
def test_a_missing_extra_is_one_line_naming_the_install_and_the_weights(name, package, extra, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    with pytest.raises(metrics.MetricUnavailable) as error:
        metrics.resolve([name])
    message = str(error.value)
    assert f"pip install 'ralu[{extra}]'" in message and "weights" in message and "\n" not in message


def test_weights_that_cannot_load_are_one_line(monkeypatch):
    def offline():
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    metric = metrics.Metric("clip", "image", True, (), "openai/clip-vit-large-patch14", offline)
    with pytest.raises(metrics.MetricUnavailable, match=r"could not load its weights \(openai/clip-vit-large-patch14\)"):
        metric.fn()


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(ValueError, match=r"metrics must be among \[.*'clip'.*\], got \['hps'\]"):
        metrics.resolve(["hps"])


def test_toy_edge_measures_on_constructed_pictures():
    from ralu.demo.judge import blockiness, fringe
    from ralu.demo.shapes import Scene, Shape, render

    rng = np.random.default_rng(0)
    smooth = rng.normal(128, 20, (64, 64, 3)).clip(0, 255)
    blocks = np.kron(rng.normal(128, 40, (8, 8, 3)), np.ones((8, 8, 1))).clip(0, 255)
    assert blockiness(smooth, 8) == pytest.approx(1.0, abs=0.1)
    assert blockiness(blocks, 8) > 10 and blockiness(blocks, 4) > blockiness(smooth, 4)
    scene = Scene((Shape("circle", "red", "large", (0.5, 0.5), 0.25),), None, (0.5, 0.5))
    sharp = render(scene, 64, supersample=1)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(sharp, sigma=(1.5, 1.5, 0))
    assert fringe(sharp) == 0.0 and fringe(blurred) > 0.1


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_toy_set_metrics_separate_a_collapsed_set_from_a_second_sample_of_the_truth():
    """In the judge's feature space, a second sample of the rendered truth is close to the first, and the
    same scenes with every object drawn as a circle (a collapse to one kind) are far: KID five times
    larger, KID and FID larger by more than twice the combined SE (jackknife and bootstrap), lower
    recall. Known answers on this seed: second sample KID 0.020 ± 0.034, FID 18.9; circles KID
    0.144 ± 0.037, FID 27.9."""
    import dataclasses

    from ralu.demo.images import to_uint8
    from ralu.demo.shapes import render_batch, scenes

    score = metrics.set_metrics(metrics.toy_features())
    pictures = lambda batch: to_uint8(torch.from_numpy(render_batch(batch, 64)))  # noqa: E731
    first, second = pictures(scenes(11, 128)), pictures(scenes(12, 128))
    circles = pictures([dataclasses.replace(s, objects=tuple(dataclasses.replace(o, kind="circle") for o in s.objects))
                        for s in scenes(12, 128)])
    same, collapsed = score(second, first), score(circles, first)
    assert abs(same["kid"]) < 0.04 and collapsed["kid"] > 4 * abs(same["kid"]), (same, collapsed)
    assert collapsed["kid"] - same["kid"] > 2 * math.hypot(same["kid_se"], collapsed["kid_se"]), (same, collapsed)
    assert collapsed["fid"] - same["fid"] > 2 * math.hypot(same["fid_se"], collapsed["fid_se"]), (same, collapsed)
    assert collapsed["recall"] < same["recall"] and same["precision"] > 0.8
