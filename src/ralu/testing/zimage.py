"""Tiny Z-Image pipelines from the real classes, seeded (see ralu.testing).

``ZImagePipeline`` needs a Qwen3 text encoder and a tokenizer with a chat template; both are
built here at toy sizes (a word-level tokenizer with a three-token chat template), with the real
``ZImageTransformer2DModel`` (its real RoPE tables: θ 256, ``axes_lens`` 1536/512/512),
``AutoencoderKL`` and ``FlowMatchEulerDiscreteScheduler``. The learned pad tokens, zeros at
initialisation, get random values so that tests see where padding goes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .flux_sd3 import TINY_VAE, WORDS

# head dim 16 = 4 + 6 + 6 (RoPE axes); the released models' axes_lens and θ
TINY_ZIMAGE_TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                               n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                               cap_feat_dim=24, rope_theta=256.0, t_scale=1000.0, axes_dims=(4, 6, 6),
                               axes_lens=(1536, 512, 512))

# one user turn, then the assistant prompt, as Qwen3's template renders it with enable_thinking=True
CHAT_TEMPLATE = ("{% for message in messages %}<user> {{ message['content'] }} <end> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<user>": 2, "<end>": 3, "<assistant>": 4}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        model_max_length=512)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_zimage_components(seed: int = 0, shift: float = 3.0, **transformer_overrides) -> dict:
    """Components of a tiny ZImagePipeline, seeded: Qwen3 text encoder (hidden width = ``cap_feat_dim``),
    VAE, ``ZImageTransformer2DModel`` with random pad tokens, and a static-shift scheduler
    (``shift`` 3.0 as Z-Image-Turbo, 6.0 as Z-Image)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    config = {**TINY_ZIMAGE_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(**config)
    with torch.no_grad():
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    vae = AutoencoderKL(**TINY_VAE)
    tokenizer = _tokenizer()
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=config["cap_feat_dim"],
                                          intermediate_size=37, num_hidden_layers=3, num_attention_heads=2,
                                          num_key_value_heads=1, head_dim=12, max_position_embeddings=512,
                                          pad_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=False, shift=shift)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_zimage(path: str | Path, seed: int = 0, shift: float = 3.0, **transformer_overrides) -> Path:
    """Write a tiny Z-Image pipeline to ``path`` with ``save_pretrained`` (loadable with ``from_pretrained``)."""
    from diffusers import ZImagePipeline

    ZImagePipeline(**tiny_zimage_components(seed, shift, **transformer_overrides)).save_pretrained(path)
    return Path(path)


# A wider random model for the position measurement: head dim 32 = 8 + 12 + 12, four joint blocks.
MEASURE_ZIMAGE_TRANSFORMER = dict(TINY_ZIMAGE_TRANSFORMER, dim=128, n_heads=4, n_kv_heads=4, n_layers=4,
                                  n_refiner_layers=2, cap_feat_dim=32, axes_dims=(8, 12, 12))


def mixed_position_errors(transformer, low_grid: tuple[int, int] = (8, 8), up_ratio: float = 0.3,
                          sigmas: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9), seeds: tuple[int, ...] = (0, 1, 2, 3),
                          caption_tokens: int = 20) -> dict[str, dict[str, float]]:
    """Where should stage-2 tokens sit? Relative velocity errors of a mixed sequence against the stock forwards.

    For each seed and σ: a random half-resolution latent on ``low_grid`` tokens and its nearest
    upsampling to full resolution (the same picture at twice the size); ``up_ratio`` of the low-res
    tokens, chosen at random, are replaced by their four children from the full-resolution latent.
    The mixed sequence runs under each convention (``mixed_positions`` x ``token_position``); its
    kept tokens are compared with the stock half-resolution forward, its children with the stock
    full-resolution forward (both unguided, through :class:`~ralu.adapters.zimage.ZImageAdapter`,
    which equals the stock forward bit for bit on those grids). Returns, per convention
    "<mixed_positions>/<token_position>", ``kept`` and ``children``: ``Σ‖v - v_stock‖² / Σ‖v_stock‖²``
    over seeds and σ, and ``all``: the same over both groups together.
    """
    from ..adapters.zimage import MIXED_POSITIONS, ZImageAdapter, captions_to_conditioning
    from ..config import TOKEN_POSITIONS
    from ..layout import MixedLayout, children_indices, grid_positions, latent_to_tokens

    full_grid = (2 * low_grid[0], 2 * low_grid[1])
    low_count = low_grid[0] * low_grid[1]
    selected_count = int(up_ratio * low_count + 1e-9)
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            channels = transformer.config.in_channels
            low = torch.randn(1, channels, 2 * low_grid[0], 2 * low_grid[1], generator=generator)
            full = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            caption = torch.randn(caption_tokens, transformer.config.cap_feat_dim, generator=generator)
            selected = torch.randperm(low_count, generator=generator)[:selected_count][None]
            layout = MixedLayout.from_selection(selected, low_grid)
            low_tokens, full_tokens = latent_to_tokens(low), latent_to_tokens(full)
            kept, _ = layout.split_low(low_tokens)
            child_index = children_indices(layout.selected, low_grid)[0]
            mixed = torch.cat([kept, full_tokens[:, child_index]], dim=1)
            stock = ZImageAdapter(transformer, captions_to_conditioning([caption]))
            for sigma in sigmas:
                v_low = stock.velocity(low_tokens, stock.prepare_positions(grid_positions(low_grid)[None], low_grid,
                                                                           "low"), sigma)
                v_full = stock.velocity(full_tokens, stock.prepare_positions(grid_positions(full_grid)[None],
                                                                             full_grid, "full"), sigma)
                ref_kept, ref_children = v_low[:, layout.kept[0]], v_full[:, child_index]
                for convention in MIXED_POSITIONS:
                    adapter = ZImageAdapter(transformer, stock.conditioning, mixed_positions=convention)
                    for token_position in TOKEN_POSITIONS:
                        positions = adapter.prepare_positions(layout.mixed_positions(token_position), low_grid, "mixed")
                        v_kept, v_children = layout.split_mixed(adapter.velocity(mixed, positions, sigma))
                        row = sums.setdefault(f"{convention}/{token_position}", [0.0] * 4)
                        row[0] += float((v_kept - ref_kept).pow(2).sum())
                        row[1] += float(ref_kept.pow(2).sum())
                        row[2] += float((v_children - ref_children).pow(2).sum())
                        row[3] += float(ref_children.pow(2).sum())
    out = {}
    for name, (kept_err, kept_ref, child_err, child_ref) in sums.items():
        out[name] = dict(kept=kept_err / kept_ref if kept_ref else 0.0,
                         children=child_err / child_ref if child_ref else 0.0,
                         all=(kept_err + child_err) / (kept_ref + child_ref))
    return out
