"""Training of the toy model: the objective against an oracle, resumption, the saved record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ralu.demo import model as toy
from ralu.demo import shapes, train
from ralu.layout import tokens_to_latent

pytestmark = pytest.mark.training


def oracle(clean: torch.Tensor, architecture: str, sign: float = 1.0):
    """A forward that knows the clean tokens: the exact velocity ``(x - x0) / σ`` (times ``sign``)."""

    def forward(hidden_states, timestep, **kwargs):
        sigma = timestep / (1000.0 if architecture == "sd3" else 1.0)  # FLUX takes σ, SD3 σ·1000
        shape = (-1,) + (1,) * (hidden_states.dim() - 1)
        target = clean if architecture == "flux" else tokens_to_latent(clean, (16, 16))
        return (sign * (hidden_states - target) / sigma.view(shape),)

    return forward


@pytest.mark.parametrize("architecture", ["flux", "sd3"])
def test_the_loss_is_zero_for_the_true_velocity_and_not_for_its_negative(architecture):
    """The target is v = ε - x0: an oracle predicting it scores 0; predicting x0 - ε scores 4·E[v²]."""
    scenes = shapes.scenes(3, 4)
    images = torch.from_numpy(shapes.render_batch(scenes, 64))
    clean = toy.encode_images(images)
    model = toy.build_toy(0, architecture)
    captions = [s.caption for s in scenes]
    model.transformer.forward = oracle(clean, architecture)
    loss = train.flow_loss(model, images, captions, torch.Generator().manual_seed(0), drop=0.0)
    assert loss.item() < 1e-8
    model.transformer.forward = oracle(clean, architecture, sign=-1.0)
    flipped = train.flow_loss(model, images, captions, torch.Generator().manual_seed(0), drop=0.0)
    assert flipped.item() > 1.0


def test_sigmas_mix_the_stock_density_and_uniform():
    sigmas = train.sample_sigmas(200_000, torch.Generator().manual_seed(0)).double().numpy()
    # P(σ <= t) = ½ t + ½ u(t), u(t) = t / (3 - 2t): the inverse of the shift-3 map
    for t in (0.1, 0.3, 0.5, 0.8):
        expected = 0.5 * t + 0.5 * t / (3 - 2 * t)
        assert abs((sigmas <= t).mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / len(sigmas))


def test_a_sigma_band_replaces_its_share_of_the_draws_with_a_uniform_band():
    sigmas = train.sample_sigmas(200_000, torch.Generator().manual_seed(0), band=(0.5, 0.9, 0.4)).double().numpy()
    for t in (0.3, 0.6, 0.8, 0.95):
        stock = 0.5 * t + 0.5 * t / (3 - 2 * t)
        expected = 0.6 * stock + 0.4 * min(1.0, max(0.0, (t - 0.5) / 0.4))
        assert abs((sigmas <= t).mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / len(sigmas))


@pytest.mark.parametrize("band", [(0.9, 0.5, 0.5), (0.2, 1.2, 0.5), (0.2, 0.8, 0.0), (0.2, 0.8)])
def test_a_bad_sigma_band_is_named(band):
    with pytest.raises(ValueError, match="sigma_band"):
        train.check_band(band)


def test_training_saves_a_loadable_model_and_resumes_exactly(tmp_path):
    kwargs = dict(steps=4, batch=2, threads=1, log_every=1, checkpoint_every=2, width=64, command="test")
    whole = train.train(tmp_path / "whole", **kwargs)
    assert whole["steps"] == 4 and np.isfinite(whole["final_loss"]) and len(whole["log"]) == 4
    assert {"cpu", "avx512_bf16", "amx"} <= set(whole["host"])
    # an interrupted run (stopped after its step-2 checkpoint) resumed from the checkpoint
    first = train.train(tmp_path / "split", **kwargs, stop_before=2)
    assert first["stopped_at"] == 2
    # resumed and stopped at once (how a killed background run is saved): the weights and the log's loss are kept
    again = train.train(tmp_path / "split", **kwargs, resume=True, stop_before=2)
    assert again["stopped_at"] == 2 and again["final_loss"] == first["log"][-1]["loss"] and again["log"] == first["log"]
    resumed = train.train(tmp_path / "split", **kwargs, resume=True)
    assert [e["loss"] for e in resumed["log"]] == [e["loss"] for e in whole["log"]]
    a, b = toy.load_toy(tmp_path / "whole"), toy.load_toy(tmp_path / "split")
    for p, q in zip(a.transformer.parameters(), b.transformer.parameters()):
        assert torch.equal(p, q)
    record = json.loads((tmp_path / "whole" / "training.json").read_text())
    assert record["parameters"]["transformer"] == sum(p.numel() for p in a.transformer.parameters())


def test_a_steps_batch_is_a_function_of_the_step_alone():
    """Step i renders scenes(seed · 1_000_003 + i): 64 px on even steps, 32 px on odd ones."""
    data = train.RenderedBatches(seed=2, batch=3)
    for step, size in ((6, 64), (7, 32)):
        images, captions = data[step]
        expected = shapes.scenes(2 * 1_000_003 + step, 3)
        assert captions == [s.caption for s in expected]
        assert torch.equal(images, torch.from_numpy(shapes.render_batch(expected, size)))


def test_rendering_in_worker_processes_trains_the_same_model(tmp_path):
    kwargs = dict(steps=3, batch=2, threads=1, log_every=1, checkpoint_every=0, width=64, command="test")
    inline = train.train(tmp_path / "inline", **kwargs)
    parallel = train.train(tmp_path / "parallel", **kwargs, workers=2)
    assert [e["loss"] for e in parallel["log"]] == [e["loss"] for e in inline["log"]]
    assert parallel["workers"] == 2 and parallel["device"] == "cpu"
    a, b = toy.load_toy(tmp_path / "inline"), toy.load_toy(tmp_path / "parallel")
    for p, q in zip(a.transformer.parameters(), b.transformer.parameters()):
        assert torch.equal(p, q)


def test_the_training_device_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.training_device("auto") == torch.device("cpu")
    assert train.training_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1", "tpu", "gpu"):
        with pytest.raises(ValueError, match="device") as error:
            train.training_device(name)
        assert "allowed: cpu, auto" in str(error.value) or "one of cpu, auto" in str(error.value)
    for argv in (["--device", "cuda"], ["--workers", "-1"], ["--sigma-band", "0.9", "0.5", "0.5"]):
        with pytest.raises(SystemExit):
            train.main(["--out", str(tmp_path / "never"), *argv])
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith("python -m ralu.demo.train: error:") and argv[0].strip("-").replace("-", "_") in \
            message.replace("-", "_")
    assert not (tmp_path / "never").exists()


def test_a_training_run_uses_and_records_its_sigma_band(tmp_path):
    kwargs = dict(steps=2, batch=2, threads=1, log_every=1, checkpoint_every=0, width=64, command="test")
    stock = train.train(tmp_path / "stock", **kwargs)
    banded = train.train(tmp_path / "band", **kwargs, sigma_band=(0.5, 0.9, 1.0))
    assert "uniform[0.5, 0.9]" in banded["sigma_sampling"] and "[" not in stock["sigma_sampling"]
    assert banded["log"][0]["loss"] != stock["log"][0]["loss"]


def test_a_non_finite_loss_stops_the_run_before_anything_is_saved(tmp_path, monkeypatch):
    """A device whose kernels return NaN (seen on a GPU) must not train for hours and save NaN weights."""
    real = train.flow_loss
    monkeypatch.setattr(train, "flow_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match="training loss is nan at step 1 on cpu"):
        train.train(tmp_path / "nan", steps=3, batch=2, threads=1, log_every=1, checkpoint_every=0, width=64,
                    command="test")
    assert not (tmp_path / "nan" / "training.json").exists()


def test_training_grows_an_initial_models_text_encoder_and_resumes_it_exactly(tmp_path):
    base = toy.build_toy(3, num_attention_heads=2)
    toy.save_toy(base, tmp_path / "base")
    kwargs = dict(steps=3, batch=2, threads=1, log_every=1, checkpoint_every=1, init=tmp_path / "base", text_layers=1,
                  command="test")
    whole = train.train(tmp_path / "whole", **kwargs)
    assert whole["text_layers"] == 1 and whole["parameters"]["text_encoder"] > 1984
    train.train(tmp_path / "split", **kwargs, stop_before=2)
    resumed = train.train(tmp_path / "split", **kwargs, resume=True)
    assert [e["loss"] for e in resumed["log"]] == [e["loss"] for e in whole["log"]]
    a, b = toy.load_toy(tmp_path / "whole").text_encoder, toy.load_toy(tmp_path / "split").text_encoder
    assert a.layers == b.layers == 1
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    moved = a.blocks[0].linear2.weight.abs().max()  # the new block trained away from its zero start
    assert moved > 0


def test_training_adds_and_records_the_phrase_context(tmp_path):
    base = toy.build_toy(3, num_attention_heads=2)
    toy.save_toy(base, tmp_path / "base")
    kwargs = dict(steps=2, batch=2, threads=1, checkpoint_every=0, init=tmp_path / "base", command="test")
    record = train.train(tmp_path / "phrase", **kwargs, phrase_context=True)
    assert record["phrase_context"] is True and train.train(tmp_path / "plain", **kwargs)["phrase_context"] is False
    trained = toy.load_toy(tmp_path / "phrase").text_encoder
    assert trained.phrase_context and trained.phrase.weight.abs().max() > 0  # trained away from its zero start
    assert not toy.load_toy(tmp_path / "plain").text_encoder.phrase_context


def test_the_text_encoders_learning_rate_scale_moves_only_the_text_encoder_faster(tmp_path):
    """Adam's first step moves every parameter with a gradient by about its learning rate: the text encoder's
    step grows with text_lr_scale, the transformer's does not."""
    base = toy.build_toy(3, num_attention_heads=2)
    toy.save_toy(base, tmp_path / "base")
    start = toy.load_toy(tmp_path / "base")

    def steps(scale):  # one step, read back from the float32 training state saved after it
        train.train(tmp_path / f"s{scale}", steps=2, batch=2, threads=1, checkpoint_every=1, stop_before=1,
                    init=tmp_path / "base", text_lr_scale=scale, command="test")
        saved = torch.load(tmp_path / f"s{scale}" / "checkpoint" / "state.pt", weights_only=False)["params"]
        before = list(start.transformer.parameters()) + list(start.text_encoder.parameters())
        moved = [(a - b).abs().max().item() for a, b in zip(saved, before)]
        split = len(list(start.transformer.parameters()))
        return max(moved[split:]), max(moved[:split])

    (text_1, transformer_1), (text_10, transformer_10) = steps(1.0), steps(10.0)
    assert text_10 / text_1 == pytest.approx(10, rel=0.2)
    assert transformer_10 / transformer_1 == pytest.approx(1, rel=0.2)
    with pytest.raises(ValueError, match="text_lr_scale"):
        train.train(tmp_path / "bad", steps=1, init=tmp_path / "base", text_lr_scale=0.0)


def test_relation_pairs_share_their_noise_and_add_the_mse_of_their_difference():
    """With a model that predicts 0, the pair term is pair_weight × mean((x0_a - x0_b)²) exactly: the shared
    noise cancels in the target difference (independent noise would add 2·E[ε²] = 2)."""
    batch = train.RenderedBatches(seed=4, batch=8, partner="relation")
    images, captions = batch[0]
    model = toy.build_toy(0)
    model.transformer.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states),)

    def loss(weight):
        return train.flow_loss(model, images, captions, torch.Generator().manual_seed(0), drop=0.1,
                               pair_weight=weight).item()

    x0 = toy.encode_images(images)
    expected = (x0[:4] - x0[4:]).pow(2).mean().item()
    assert 0.01 < expected < 1.0
    assert loss(2.0) - loss(0.0) == pytest.approx(2.0 * expected, rel=1e-4)


@pytest.mark.parametrize("partner, make", [("relation", shapes.mirrored), ("kind", shapes.kinds_swapped)])
def test_paired_batches_are_scenes_then_their_partners(partner, make):
    images, captions = train.RenderedBatches(seed=4, batch=8, partner=partner)[0]
    first = shapes.scenes(4 * 1_000_003, 4)
    partners = [make(s) for s in first]
    assert captions == [s.caption for s in first + partners]
    assert np.array_equal(images[4:].numpy(), shapes.render_batch(partners, 64))
    with pytest.raises(ValueError, match="even"):
        train.RenderedBatches(seed=4, batch=7, partner=partner)


def test_batches_name_their_partner():
    with pytest.raises(ValueError, match="partner must be one of"):
        train.RenderedBatches(seed=4, batch=8, partner="colour")


def test_a_training_run_uses_and_records_its_relation_pairs(tmp_path, monkeypatch):
    kwargs = dict(steps=2, batch=4, threads=1, log_every=1, checkpoint_every=0, width=64, command="test")
    plain = train.train(tmp_path / "plain", **kwargs)
    real, seen = train.flow_loss, []

    def spy(model, images, captions, *args):
        seen.append((list(captions), args[-1]))
        return real(model, images, captions, *args)

    monkeypatch.setattr(train, "flow_loss", spy)
    paired = train.train(tmp_path / "pairs", **kwargs, relation_pairs=1.0)
    first = shapes.scenes(1 * 1_000_003, 2)  # step 0 of seed 1
    assert seen[0] == ([s.caption for s in first + [shapes.mirrored(s) for s in first]], 1.0)
    assert paired["relation_pairs"] == 1.0 and plain["relation_pairs"] is None
    assert paired["log"][0]["loss"] != plain["log"][0]["loss"]
    for bad, match in ((-1.0, ">= 0"), (1.0, "even batch")):
        with pytest.raises(ValueError, match=f"relation_pairs.*{match}"):
            train.train(tmp_path / "bad", steps=1, batch=3 if match == "even batch" else 4, relation_pairs=bad)
    seen.clear()
    kinds = train.train(tmp_path / "kinds", **kwargs, kind_pairs=0.5)
    assert seen[0] == ([s.caption for s in first + [shapes.kinds_swapped(s) for s in first]], 0.5)
    assert kinds["kind_pairs"] == 0.5 and kinds["relation_pairs"] is None and paired["kind_pairs"] is None
    with pytest.raises(ValueError, match="kind_pairs must be >= 0"):
        train.train(tmp_path / "bad", steps=1, batch=4, kind_pairs=-0.5)
    with pytest.raises(ValueError, match="cannot be combined"):
        train.train(tmp_path / "bad", steps=1, batch=4, kind_pairs=1.0, relation_pairs=1.0)


def test_training_sets_records_and_saves_canonical_relations(tmp_path):
    kwargs = dict(steps=1, batch=2, threads=1, checkpoint_every=0, width=64, command="test")
    on = train.train(tmp_path / "on", **kwargs, canonical_relations=True)
    assert on["canonical_relations"] is True and toy.load_toy(tmp_path / "on").tokenizer.canonical_relations
    kept = train.train(tmp_path / "kept", **{**kwargs, "width": None}, init=tmp_path / "on")  # None keeps the model's
    assert kept["canonical_relations"] is True and toy.load_toy(tmp_path / "kept").tokenizer.canonical_relations
    off = train.train(tmp_path / "off", **kwargs)
    assert off["canonical_relations"] is False and not toy.load_toy(tmp_path / "off").tokenizer.canonical_relations
    assert train.main(["--out", str(tmp_path / "cli"), "--steps", "1", "--batch", "2", "--width", "64",
                       "--checkpoint-every", "0", "--canonical-relations"]) == 0
    assert toy.load_toy(tmp_path / "cli").tokenizer.canonical_relations
