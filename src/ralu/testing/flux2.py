"""Tiny FLUX.2 [dev] and FLUX.2 [klein] pipelines from the real classes, seeded (see ralu.testing).

``Flux2Pipeline``: Mistral3ForConditionalGeneration (a tiny text stack and vision tower),
``AutoencoderKLFlux2``, ``Flux2Transformer2DModel`` with guidance embedding, FLUX.2's scheduler.
``Flux2KleinPipeline``: Qwen3ForCausalLM instead, no guidance embedding, ``is_distilled`` either way.
The text stacks are deep enough for the stock hidden-state layers ((10, 20, 30) and (9, 18, 27)).
Both tokenizers are word-level fast tokenizers with a chat template that renders the user turns
only (the stock ones prepend a system message); the VAE's BatchNorm statistics are random, so the
latent normalisation is not the identity.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .flux_sd3 import WORDS

TINY_FLUX2_TRANSFORMER = dict(patch_size=1, in_channels=32, num_layers=1, num_single_layers=2, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=32,
                              mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, guidance_embeds=True)
# 8 latent channels (FLUX.2 has 32): a token holds 8·2·2 = 32 values
TINY_FLUX2_VAE = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 16, 16),
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                      layers_per_block=1, norm_num_groups=4, patch_size=(2, 2))
TEXT_WIDTH = 16  # the transformer reads three stacked hidden states: joint_attention_dim = 3 x 16
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{% if m['content'] is string %}"
                 "{{ m['content'] }} {% else %}{% for c in m['content'] %}{{ c['text'] }} {% endfor %}{% endif %}"
                 "{% endif %}{% endfor %}")
FLUX2_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        model_max_length=512)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(**TINY_FLUX2_VAE)
    channels = vae.bn.num_features
    vae.bn.running_mean.copy_(0.5 * torch.randn(channels))
    vae.bn.running_var.copy_(torch.rand(channels) + 0.5)
    return vae.eval()


def tiny_flux2_components(seed: int = 0, **transformer_overrides) -> dict:
    """Components of a tiny Flux2Pipeline, seeded; ``transformer_overrides`` change the transformer config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = {**TINY_FLUX2_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(**config)
    vae = _vae()
    tokenizer = _tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=31,
                num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                pad_token_id=0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                  image_size=32, patch_size=8)
    encoder = Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision,
                                                              image_token_index=len(tokenizer),
                                                              projector_hidden_act="gelu"))
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER)
    return dict(transformer=transformer, vae=vae, text_encoder=encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def tiny_flux2_klein_components(seed: int = 0, **transformer_overrides) -> dict:
    """Components of a tiny Flux2KleinPipeline (without ``is_distilled``), seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = {**TINY_FLUX2_TRANSFORMER, "guidance_embeds": False, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(**config)
    vae = _vae()
    tokenizer = _tokenizer()
    encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32,
                                           num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=8, max_position_embeddings=1024, pad_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER)
    return dict(transformer=transformer, vae=vae, text_encoder=encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_flux2(path: str | Path, seed: int = 0, **transformer_overrides) -> Path:
    """Write a tiny Flux2Pipeline to ``path`` with ``save_pretrained`` (loadable with ``from_pretrained``)."""
    from diffusers import Flux2Pipeline

    Flux2Pipeline(**tiny_flux2_components(seed, **transformer_overrides)).save_pretrained(path)
    return Path(path)


def save_tiny_flux2_klein(path: str | Path, seed: int = 0, is_distilled: bool = True, **transformer_overrides) -> Path:
    """Write a tiny Flux2KleinPipeline (step-distilled or base) to ``path`` with ``save_pretrained``."""
    from diffusers import Flux2KleinPipeline

    components = tiny_flux2_klein_components(seed, **transformer_overrides)
    Flux2KleinPipeline(**components, is_distilled=is_distilled).save_pretrained(path)
    return Path(path)
