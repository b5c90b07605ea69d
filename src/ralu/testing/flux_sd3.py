"""Tiny FLUX.1 and SD3/SD3.5 pipelines from the real classes, seeded (see ralu.testing).

No weights can be downloaded here, so the offline demo and the tests assemble a complete
``FluxPipeline`` (CLIP + T5 text stacks with hand-made tokenizers, AutoencoderKL, transformer,
scheduler) from tiny configs. The pictures are noise; the code paths are the real ones.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

WORDS = ("a", "an", "the", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "puppy",
         "kitten", "high", "fiving", "photo", "of", "on", "left", "right", "and", "big", "small", "dog", "cat")

TINY_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        axes_dims_rope=(4, 6, 6), guidance_embeds=True)

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for word in WORDS:
        vocab.setdefault(word + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="!")


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_flux_components(seed: int = 0, **transformer_overrides) -> dict:
    """Components of a tiny FluxPipeline, seeded. ``transformer_overrides`` change the transformer config
    (e.g. a wider, FLUX-shaped model for timing); the text encoders' widths follow ``joint_attention_dim``
    (T5) and ``pooled_projection_dim`` (CLIP, whose pooled output the transformer consumes).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config = {**TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**config)
    vae = AutoencoderKL(**TINY_VAE)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _clip_tokenizer(Path(folder))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=config["pooled_projection_dim"], intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                        projection_dim=config["pooled_projection_dim"], bos_token_id=0,
                                        eos_token_id=1, pad_token_id=2))
    tokenizer_2 = _t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=config["joint_attention_dim"], d_kv=8,
                                 d_ff=37, num_layers=2, num_heads=2, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return dict(transformer=transformer, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                tokenizer_2=tokenizer_2, scheduler=scheduler)


def save_tiny_flux(path: str | Path, seed: int = 0, **transformer_overrides) -> Path:
    """Write a tiny FLUX pipeline to ``path`` with ``save_pretrained`` (loadable with ``from_pretrained``)."""
    from diffusers import FluxPipeline

    FluxPipeline(**tiny_flux_components(seed, **transformer_overrides)).save_pretrained(path)
    return Path(path)


# SD3: the joint width J is T5's; the two CLIP towers' hidden states (J/2 each) are concatenated
# to J, their pooled projections (P/2 each) to P. inner width = heads x head_dim = caption width.
TINY_SD3_TRANSFORMER = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                            num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                            pooled_projection_dim=32, out_channels=16, pos_embed_max_size=24)
# SD3.5's block variant: RMS-normed queries and keys, a second (image-only) attention in block 0
TINY_SD35_BLOCKS = dict(qk_norm="rms_norm", dual_attention_layers=(0,))


def tiny_sd3_components(seed: int = 0, **transformer_overrides) -> dict:
    """Components of a tiny StableDiffusion3Pipeline, seeded: two CLIP towers with projection, T5, VAE,
    ``SD3Transformer2DModel`` and SD3's scheduler (static shift 3.0). ``transformer_overrides`` change the
    transformer config, e.g. ``**TINY_SD35_BLOCKS`` for SD3.5-style blocks. The tiny position table
    (``pos_embed_max_size=24`` for ``sample_size=32``) keeps SD3's base/M = 2/3 and allows up to 384 px.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    config = {**TINY_SD3_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**config)
    vae = AutoencoderKL(**TINY_VAE)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _clip_tokenizer(Path(folder))
    with tempfile.TemporaryDirectory() as folder:
        tokenizer_2 = _clip_tokenizer(Path(folder))
    clips = [CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config["joint_attention_dim"] // 2, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=config["pooled_projection_dim"] // 2, bos_token_id=0, eos_token_id=1, pad_token_id=2))
        for _ in range(2)]
    tokenizer_3 = _t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=config["joint_attention_dim"], d_kv=8,
                                 d_ff=37, num_layers=2, num_heads=2, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return dict(transformer=transformer, vae=vae, text_encoder=clips[0], tokenizer=tokenizer, text_encoder_2=clips[1],
                tokenizer_2=tokenizer_2, text_encoder_3=t5, tokenizer_3=tokenizer_3, scheduler=scheduler)


def save_tiny_sd3(path: str | Path, seed: int = 0, **transformer_overrides) -> Path:
    """Write a tiny SD3 pipeline to ``path`` with ``save_pretrained`` (loadable with ``from_pretrained``)."""
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**tiny_sd3_components(seed, **transformer_overrides)).save_pretrained(path)
    return Path(path)
