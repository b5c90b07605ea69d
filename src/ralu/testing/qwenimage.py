"""A tiny Qwen-Image pipeline from the real classes, seeded (see ralu.testing).

``QwenImagePipeline`` with a tiny ``Qwen2_5_VLForConditionalGeneration`` text encoder (and a
word-level tokenizer that splits the pipeline's prompt template into the same 34 leading tokens
as Qwen's own tokenizer, so the template is dropped where it is for the real model),
``AutoencoderKLQwenImage`` with Qwen-Image's latent mean and std, ``QwenImageTransformer2DModel``
and Qwen-Image's scheduler config. The pictures are noise; the code paths are the real ones.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from .flux_sd3 import WORDS

# inner width 2 x 16; the three RoPE axes (frame, height, width) split the 16 head channels
TINY_QWEN_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                             num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
# Qwen-Image's VAE layout (8x down, 16 latent channels, its latent mean/std) at a tiny width
TINY_QWEN_VAE = dict(base_dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1, attn_scales=(),
                     temperal_downsample=(False, True, True))

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
# the words of QwenImagePipeline's prompt template, so that it tokenizes without <unk>
TEMPLATE_WORDS = ("system", "user", "assistant", "Describe", "the", "image", "by", "detailing", "color", "shape",
                  "size", "texture", "quantity", "text", "spatial", "relationships", "of", "objects", "and",
                  "background", ",", ":", "\n")


def qwen_scheduler_config() -> dict:
    """Qwen-Image's released scheduler config (from the shipped ``data/models/qwen-image.json``)."""
    data = json.loads(resources.files("ralu").joinpath("data", "models", "qwen-image.json").read_text())
    return {k: v for k, v in data["scheduler"].items() if not k.startswith("_")}


def _qwen_tokenizer():
    """Word-level tokenizer: words, single punctuation marks and newlines are tokens, spaces are dropped.

    The template prefix ``<|im_start|>system\\n...background:<|im_end|>\\n<|im_start|>user\\n`` is
    34 tokens, as with Qwen2's BPE, so ``prompt_template_encode_start_idx = 34`` drops exactly it.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in SPECIAL_TOKENS + TEMPLATE_WORDS + WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=list(SPECIAL_TOKENS), model_max_length=2048)


def tiny_qwenimage_components(seed: int = 0, **transformer_overrides) -> dict:
    """Components of a tiny QwenImagePipeline, seeded. ``transformer_overrides`` change the transformer
    config; the text encoder's width follows ``joint_attention_dim``."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = {**TINY_QWEN_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**config)
    vae = AutoencoderKLQwenImage(**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_QWEN_VAE.items()})
    tokenizer = _qwen_tokenizer()
    width = config["joint_attention_dim"]
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           fullatt_block_indexes=[0]),
        image_token_id=len(tokenizer) + 1, video_token_id=len(tokenizer) + 2,
        vision_start_token_id=len(tokenizer) + 3, vision_end_token_id=len(tokenizer) + 4))
    scheduler = FlowMatchEulerDiscreteScheduler(**qwen_scheduler_config())
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_qwenimage(path: str | Path, seed: int = 0, **transformer_overrides) -> Path:
    """Write a tiny Qwen-Image pipeline to ``path`` with ``save_pretrained`` (loadable with ``from_pretrained``)."""
    from diffusers import QwenImagePipeline

    QwenImagePipeline(**tiny_qwenimage_components(seed, **transformer_overrides)).save_pretrained(path)
    return Path(path)


# the candidate stage-2 conventions measured by mixed_position_errors: (name, table_positions,
# token_position, which grid the text follows: None for the convention's own)
POSITION_CANDIDATES = (
    ("low_grid", "low_grid", "corner", None),
    ("low_grid center", "low_grid", "center", None),
    ("low_grid, text on the full grid", "low_grid", "corner", "full"),
    ("stock_then_full", "stock_then_full", "corner", None),
    ("stock_then_full center", "stock_then_full", "center", None),
    ("stock_then_full, text on the low grid", "stock_then_full", "corner", "low"),
)


def mixed_position_errors(transformer, low_grid: tuple[int, int] = (8, 8), up_ratio: float = 0.3,
                          sigmas: tuple[float, ...] = (0.5, 0.8), seeds: tuple[int, ...] = (0, 1, 2, 3),
                          text_tokens: int = 8) -> dict[str, dict[str, float]]:
    """How far a stage-2 sequence's velocities lie from the stock single-resolution forwards, per convention.

    A constructed case where both stock forwards describe the same picture: random low-res tokens on
    ``low_grid`` and the full-resolution latent that is their nearest upsampling. ``up_ratio`` of the
    low-res tokens (chosen at random) are replaced by their four children. Returns, per candidate of
    :data:`POSITION_CANDIDATES`, the relative RMS error ``‖v - v_stock‖ / ‖v_stock‖`` of the kept
    tokens against the stock half-resolution forward ("kept") and of the children against the stock
    full-resolution forward ("children"), and of both together ("all"), pooled over seeds and σ;
    "stage 1 full_grid" holds the low-res sequence at full-grid positions against the stock
    half-resolution forward.
    """
    from dataclasses import replace

    from ..adapters.base import Conditioning
    from ..adapters.qwenimage import QwenImageAdapter, text_offset
    from ..layout import MixedLayout, children_indices, grid_positions, upsample_tokens

    full_grid = (2 * low_grid[0], 2 * low_grid[1])
    low_tokens = low_grid[0] * low_grid[1]
    k = int(up_ratio * low_tokens + 1e-9)
    sums: dict[str, list[float]] = {}

    def add(name: str, part: str, ours: torch.Tensor, stock: torch.Tensor) -> None:
        entry = sums.setdefault(f"{name}|{part}", [0.0, 0.0])
        entry[0] += float((ours - stock).pow(2).sum())
        entry[1] += float(stock.pow(2).sum())

    with torch.no_grad():
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            text = torch.randn(1, text_tokens, transformer.config.joint_attention_dim, generator=generator)
            x_low = torch.randn(1, low_tokens, transformer.config.in_channels, generator=generator)
            selected = torch.randperm(low_tokens, generator=generator)[:k][None]
            layout = MixedLayout.from_selection(selected, low_grid)
            everything = MixedLayout.from_selection(torch.arange(low_tokens)[None], low_grid)
            x_full, _ = everything.to_raster(x_low[:, :0], upsample_tokens(x_low, "latent_nearest"))
            kept, parents = layout.split_low(x_low)
            mixed = torch.cat([kept, upsample_tokens(parents, "latent_nearest")], dim=1)
            child_index = children_indices(layout.selected, low_grid)[0]
            for sigma in sigmas:
                stock = QwenImageAdapter(transformer, Conditioning(text), full_grid)
                v_low = stock.velocity(x_low, stock.prepare_positions(grid_positions(low_grid)[None], low_grid, "low"),
                                       sigma)
                v_full = stock.velocity(x_full, stock.prepare_positions(grid_positions(full_grid)[None], full_grid),
                                        sigma)
                full_stage1 = QwenImageAdapter(transformer, Conditioning(text), full_grid, table_positions="full_grid")
                low_at_full = full_stage1.prepare_positions(grid_positions(low_grid)[None], low_grid, "low")
                add("stage 1 full_grid", "kept", full_stage1.velocity(x_low, low_at_full, sigma), v_low)
                for name, table, token_position, text_grid in POSITION_CANDIDATES:
                    adapter = QwenImageAdapter(transformer, Conditioning(text), full_grid, table_positions=table)
                    positions = adapter.prepare_positions(layout.mixed_positions(token_position), low_grid, "mixed")
                    if text_grid is not None:
                        positions = replace(positions, text_offset=text_offset(full_grid if text_grid == "full"
                                                                               else low_grid))
                    v = adapter.velocity(mixed, positions, sigma)
                    add(name, "kept", v[:, : layout.num_kept], v_low[:, layout.kept[0]])
                    add(name, "children", v[:, layout.num_kept :], v_full[:, child_index])
                    add(name, "all", v, torch.cat([v_low[:, layout.kept[0]], v_full[:, child_index]], dim=1))
    out: dict[str, dict[str, float]] = {}
    for key, (err, ref) in sums.items():
        name, part = key.split("|")
        out.setdefault(name, {})[part] = (err / ref) ** 0.5
    return out


def position_report(models: int = 3, sharpen: tuple[float, ...] = (1.0, 2.0), low_grids=((8, 8), (6, 10))) -> str:
    """The measurement behind the stage-2 position convention (docs/families/qwenimage.md), as a markdown table.

    ``models`` random transformers (4 blocks, 4 heads of 32) per row; ``sharpen`` multiplies their
    query/key RMSNorm weights, which scales the attention logits by its square: random weights give
    nearly flat attention, in which positions hardly matter, and a trained model's is peaked.
    Mean over the models of :func:`mixed_position_errors` (up_ratio 0.3, σ 0.5 and 0.8, 4 seeds).
    """
    from diffusers import QwenImageTransformer2DModel

    config = dict(TINY_QWEN_TRANSFORMER, num_layers=4, num_attention_heads=4, attention_head_dim=32,
                  axes_dims_rope=(8, 12, 12))
    lines = ["| low grid | q/k scale | candidate | kept vs half-res | children vs full-res | all |",
             "| --- | --- | --- | --- | --- | --- |"]
    for grid in low_grids:
        for scale in sharpen:
            rows: dict[str, dict[str, float]] = {}
            for seed in range(models):
                torch.manual_seed(100 + seed)
                transformer = QwenImageTransformer2DModel(**config).eval()
                with torch.no_grad():
                    for block in transformer.transformer_blocks:
                        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
                            getattr(block.attn, name).weight.mul_(scale)
                for name, parts in mixed_position_errors(transformer, low_grid=tuple(grid)).items():
                    for part, value in parts.items():
                        rows.setdefault(name, {}).setdefault(part, 0.0)
                        rows[name][part] += value / models
            for name, parts in rows.items():
                cells = [f"{parts[p]:.4f}" if p in parts else "" for p in ("kept", "children", "all")]
                lines.append(f"| {grid[0]}x{grid[1]} | {scale:g} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
