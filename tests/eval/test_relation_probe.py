"""tools/relation_probe.py: its sensitivities on models whose answers are known by construction."""

from __future__ import annotations

import pytest
import torch

from ralu.demo import model as toy
from tests.eval import load_tool

TOOL = "relation_probe"


@torch.no_grad()
def test_a_bag_of_words_model_scores_zero_for_order_and_relation_and_a_position_aware_one_does_not():
    probe = load_tool(TOOL)
    model = toy.build_toy(5, num_attention_heads=2)
    for p in model.transformer.parameters():  # larger than the near-zero init, so text conditioning matters
        p.normal_(0, 0.05)
    encoder, index = model.text_encoder, model.tokenizer.index
    noise = toy.initial_noise([0, 1])
    # every text token sits at RoPE position 0 and attention sums over keys: without position embeddings the
    # prediction cannot see word order, and with "left" = "right" and "above" = "below" it cannot see the relation
    encoder.positions.zero_()
    for a, b in (("left", "right"), ("above", "below")):
        encoder.words.weight[index[b]] = encoder.words.weight[index[a]]
    blind = probe.sensitivities(model, noise, 0.9)
    assert blind["colour"] == 1.0 and blind["reference"] > 0
    assert max(blind["relation word"], blind["object order"], blind["kind swap"]) < 1e-3  # float summation order only
    # the two paths of a colour change add up to about the whole change (the model is not linear in them)
    assert 0.5 < blind["colour, sequence only"] + blind["colour, pooled only"] < 2.0
    encoder.positions.normal_(0, 1.0)
    encoder.words.weight[index["right"]].normal_(0, 1.0)
    seeing = probe.sensitivities(model, noise, 0.9)
    assert min(seeing["relation word"], seeing["object order"], seeing["kind swap"]) > 0.01


def test_the_probe_refuses_the_sd3_twin():
    probe = load_tool(TOOL)
    with pytest.raises(SystemExit, match="model must be the FLUX toy"):
        probe.main([str(toy.SD3_DATA_DIR), "2"])


def test_a_checkpoint_folder_is_probed_with_its_training_weights(tmp_path):
    probe = load_tool(TOOL)
    model = toy.build_toy(5, num_attention_heads=2)
    toy.save_toy(model, tmp_path, dtype=torch.float32)
    params = list(model.transformer.parameters()) + list(model.text_encoder.parameters())
    trained = [p.detach() + 1.0 for p in params]
    assert all(torch.equal(p, q) for p, q in zip(params, probe.load_probed(str(tmp_path)).transformer.parameters()))
    torch.save(dict(params=trained), tmp_path / "state.pt")
    loaded = probe.load_probed(str(tmp_path))
    for p, q in zip(trained, list(loaded.transformer.parameters()) + list(loaded.text_encoder.parameters())):
        assert torch.equal(p, q)
    torch.save(dict(params=trained[1:]), tmp_path / "state.pt")
    with pytest.raises(SystemExit, match="does not hold this model's parameters"):
        probe.load_probed(str(tmp_path))
