"""A small trained text-to-image FLUX model of coloured shapes, shipped with the package.

- Latent space: pixel space, no VAE. A 64×64 RGB image in [-1, 1] is split into 2×2 pixel
  blocks (``pixel_unshuffle``) and each channel's four pixels go through the orthonormal 2×2
  Haar transform, giving a 12-channel latent at 32×32. Like a VAE latent, a latent pixel is then
  a summary of its neighbourhood (the block mean, ×2, plus three detail coefficients), so that
  replicating a latent pixel replicates its block's mean colour; a bare pixel-unshuffle would
  scramble sub-pixels instead. The transform is exact and orthonormal: white noise stays white.
  FLUX's packing then makes 16×16 = 256 tokens of 48 values (``FluxPipeline._pack_latents``);
  at half resolution (32 px) 8×8 = 64 tokens, each covering 4×4 px.
- Transformer: ``diffusers.FluxTransformer2DModel`` (:data:`TRANSFORMER_CONFIG`), RoPE on
  ``img_ids = [0, row, col]``, no guidance embedding.
- Text: a word-level tokenizer over :data:`ralu.shapes.VOCABULARY` and :class:`ToyTextEncoder`
  (learned word + position embeddings; pooled = mean over the words), trained with the model.
- Objective: rectified flow, ``x_σ = (1-σ)·x0 + σ·ε``, target ``v = ε - x0``, with
  ``σ = shift_3(u)``, u uniform: the stock schedule's density at base shift 3.0, which is what
  NT-DM assumes (DESIGN.md §5). Full (64 px) and half (32 px) batches alternate. 10% of the
  captions are dropped (empty prompt) so that classifier-free guidance is available.

``python -m ralu.toy train --out DIR --steps N --seed 0`` trains; :func:`load_toy` loads the
shipped weights (``ralu/data/toy``) with ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters.flux import FluxAdapter
from .adapters.sd3 import SD3Adapter
from .config import Baseline, RALUConfig
from .layout import grid_positions, tokens_to_latent
from .sampler import SampleResult, sample
from .schedule import shift_sigmas
from .shapes import VOCABULARY, render_batch, scenes

if TYPE_CHECKING:
    from PIL import Image

DATA_DIR = Path(__file__).parent / "data" / "toy"
SD3_DATA_DIR = Path(__file__).parent / "data" / "toy_sd3"  # the SD3-architecture twin
RESOLUTION = 64  # px at full resolution
BASE_SHIFT = 3.0  # training σ density and the baseline's scheduler shift
MAX_WORDS = 12  # the longest caption has 10 words
TEXT_DIM = 64
LATENT_CHANNELS = 12  # 3 colours × 4 Haar coefficients
PIXELS_PER_TOKEN = 4  # a token packs 2×2 latent pixels, each a 2×2 pixel block

DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale of the demo and the quality benchmark (docs/toy_samples.png)
DEMO_PROMPTS = ("a large red circle left of a small blue square", "a large yellow star",
                "a small green triangle above a large purple circle",
                "a large orange square right of a small blue star")

TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=2, num_single_layers=4,
                          attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_DIM,
                          pooled_projection_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(8, 12, 12))
# The SD3-architecture twin (``--arch sd3``): same latent, tokens, text encoder and training, but
# an ``SD3Transformer2DModel`` that patchifies the 12-channel latent itself (patch 2, so the same
# 16×16 tokens of 48 values) and adds a centre crop of an absolute sin-cos table. The table keeps
# SD3's proportions: SD3 has 96 cells for its 64-patch (1024 px) grid, this one 24 for 16 patches,
# so a full-resolution image crops cells 4..19 and a half-resolution one cells 8..15, as SD3 crops
# 16..79 at 1024 px and 32..63 at 512 px. qk_norm="rms_norm" as SD3.5 (it trains stably at lr 1e-3).
SD3_TRANSFORMER_CONFIG = dict(sample_size=2 * RESOLUTION // PIXELS_PER_TOKEN, patch_size=2,
                              in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=4,
                              attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_DIM,
                              caption_projection_dim=128, pooled_projection_dim=TEXT_DIM,
                              pos_embed_max_size=3 * RESOLUTION // (2 * PIXELS_PER_TOKEN), qk_norm="rms_norm")
ARCHITECTURES = {"flux": ("FluxTransformer2DModel", TRANSFORMER_CONFIG),
                 "sd3": ("SD3Transformer2DModel", SD3_TRANSFORMER_CONFIG)}

# Rows: LL (mean ×2), horizontal, vertical and diagonal detail; orthonormal and symmetric, so it
# is its own inverse. Columns: the block's pixels (0,0), (0,1), (1,0), (1,1).
HAAR = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]) / 2


def _haar(x: torch.Tensor) -> torch.Tensor:
    """Apply HAAR to groups of 4 channels: (B, 4C, H, W) with channel c·4 + k → same shape."""
    groups = x.unflatten(1, (-1, 4))
    return torch.einsum("kj,bcjhw->bckhw", HAAR.to(x), groups).flatten(1, 2)


def encode_images(images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1], H and W multiples of 4 → packed tokens (B, H/4·W/4, 48)."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    latents = _haar(F.pixel_unshuffle(images, 2))
    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def decode_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Packed tokens (B, h·w, 48) on the token grid (h, w) → images (B, 3, 4h, 4w) (not clipped)."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    latents = FluxPipeline._unpack_latents(tokens, 2 * grid[0], 2 * grid[1], 1)
    return F.pixel_shuffle(_haar(latents), 2)


class ToyTokenizer:
    """Word-level tokenizer over a fixed vocabulary; id 0 pads. Unknown words raise ValueError."""

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, max_words: int = MAX_WORDS):
        self.vocabulary = tuple(vocabulary)
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.max_words = max_words

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions → (B, max_words) int64 ids, padded with 0."""
        ids = torch.zeros(len(captions), self.max_words, dtype=torch.long)
        for b, caption in enumerate(captions):
            words = caption.split()
            unknown = [w for w in words if w not in self.index]
            if unknown or len(words) > self.max_words:
                raise ValueError(f"prompt must use at most {self.max_words} words of {self.vocabulary[1:]}, "
                                 f"got {caption!r}" + (f" (unknown: {unknown})" if unknown else ""))
            ids[b, : len(words)] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids


class ToyTextEncoder(nn.Module):
    """Word + position embeddings: ids (B, T) → states (B, T, dim) and pooled (B, dim), the mean over words."""

    def __init__(self, vocab_size: int = len(VOCABULARY), max_words: int = MAX_WORDS, dim: int = TEXT_DIM):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(max_words, dim))
        nn.init.normal_(self.words.weight, std=0.5)
        nn.init.normal_(self.positions, std=0.1)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.words(ids) + self.positions[: ids.shape[1]]
        present = (ids != 0).to(states.dtype)[..., None]
        pooled = (states * present).sum(1) / present.sum(1).clamp(min=1.0)
        return states, pooled


@dataclass
class ToyModel:
    """The shipped model: transformer, text encoder and tokenizer."""

    transformer: nn.Module
    text_encoder: ToyTextEncoder
    tokenizer: ToyTokenizer

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts → (states (B, T, 64), pooled (B, 64), text_ids (T, 3) zeros), as FluxPipeline.encode_prompt."""
        device = next(self.transformer.parameters()).device
        states, pooled = self.text_encoder(self.tokenizer(prompts).to(device))
        return states, pooled, torch.zeros(states.shape[1], 3, device=device)

    @property
    def architecture(self) -> str:
        """"flux" or "sd3": which diffusers transformer class the model is."""
        return "sd3" if type(self.transformer).__name__ == "SD3Transformer2DModel" else "flux"

    def adapter(self, prompts: Sequence[str], guidance_scale: float = 1.0, grid: tuple[int, int] | None = None,
                table_positions: str = "stock_then_full") -> ToyAdapter | ToySD3Adapter:
        """A sampler adapter for these prompts; ``guidance_scale`` > 1 adds classifier-free guidance
        against the empty prompt (one more transformer call per step).

        grid and table_positions only matter for the SD3 architecture: the run's full token grid
        (default: the toy's 64 px) and the ``RALUConfig.table_positions`` convention.
        """
        negative = self.encode_prompt([""] * len(prompts)) if guidance_scale > 1 else None
        if self.architecture == "sd3":
            states, pooled, _ = self.encode_prompt(prompts)
            return ToySD3Adapter(self.transformer, states, pooled, grid or token_grid(),
                                 negative=negative[:2] if negative else None, guidance_scale=guidance_scale,
                                 table_positions=table_positions)
        return ToyAdapter(self.transformer, *self.encode_prompt(prompts), negative=negative,
                          true_cfg_scale=guidance_scale)


class ToyAdapter(FluxAdapter):
    """FluxAdapter for the pixel-space toy model: decoding is the exact inverse Haar + pixel shuffle."""

    def __init__(self, transformer, prompt_embeds, pooled_prompt_embeds, text_ids, negative=None,
                 true_cfg_scale: float = 1.0):
        super().__init__(transformer, None, prompt_embeds, pooled_prompt_embeds, text_ids, negative=negative,
                         true_cfg_scale=true_cfg_scale, vae_scale_factor=1)

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, 48) → images (B, 3, 4h, 4w) in [-1, 1]."""
        return decode_tokens(x0.float(), grid).clamp(-1.0, 1.0)


class ToySD3Adapter(SD3Adapter):
    """SD3Adapter for the pixel-space SD3-architecture toy: decoding is the exact inverse Haar + pixel shuffle."""

    def __init__(self, transformer, prompt_embeds, pooled_prompt_embeds, full_grid, negative=None,
                 guidance_scale: float = 1.0, table_positions: str = "stock_then_full"):
        super().__init__(transformer, None, prompt_embeds, pooled_prompt_embeds, full_grid, negative=negative,
                         guidance_scale=guidance_scale, table_positions=table_positions)

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, 48) → images (B, 3, 4h, 4w) in [-1, 1]."""
        return decode_tokens(x0.float(), grid).clamp(-1.0, 1.0)


def _transformer_class(name: str):
    import diffusers

    if name not in {cls for cls, _ in ARCHITECTURES.values()}:
        raise ValueError(f"toy transformer must be one of {[cls for cls, _ in ARCHITECTURES.values()]}, got {name!r}")
    return getattr(diffusers, name)


def build_toy(seed: int = 0, architecture: str = "flux") -> ToyModel:
    """A freshly initialised (untrained) toy model, seeded; architecture "flux" or "sd3"."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {tuple(ARCHITECTURES)}, got {architecture!r}")
    name, config = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    return ToyModel(_transformer_class(name)(**config), ToyTextEncoder(), ToyTokenizer())


def save_toy(model: ToyModel, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``transformer/`` (``save_pretrained``), ``text_encoder.safetensors`` and ``text_encoder.json``.

    dtype: storage precision (float16 halves the package size; loading casts back to float32).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transformer = model.transformer
    original = next(transformer.parameters()).dtype
    transformer.to(dtype).save_pretrained(folder / "transformer")
    transformer.to(original)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.text_encoder.state_dict().items()}
    save_file(state, str(folder / "text_encoder.safetensors"))
    (folder / "text_encoder.json").write_text(json.dumps(dict(
        vocabulary=list(model.tokenizer.vocabulary), max_words=model.tokenizer.max_words,
        dim=model.text_encoder.words.embedding_dim), indent=1) + "\n")
    return folder


def load_toy(folder: str | Path | None = None, device: str | torch.device = "cpu") -> ToyModel:
    """Load a saved toy model (default: the FLUX weights shipped in ``ralu/data/toy``; the SD3 twin
    is :data:`SD3_DATA_DIR`), float32, eval mode. The transformer class comes from its config."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DATA_DIR
    if not (folder / "transformer").is_dir():
        raise FileNotFoundError(f"no toy model in {folder} (expected transformer/ and text_encoder.safetensors)")
    name = json.loads((folder / "transformer" / "config.json").read_text())["_class_name"]
    transformer = _transformer_class(name).from_pretrained(folder / "transformer", torch_dtype=torch.float32)
    spec = json.loads((folder / "text_encoder.json").read_text())
    tokenizer = ToyTokenizer(spec["vocabulary"], spec["max_words"])
    text_encoder = ToyTextEncoder(len(spec["vocabulary"]), spec["max_words"], spec["dim"])
    text_encoder.load_state_dict({k: v.float() for k, v in load_file(str(folder / "text_encoder.safetensors")).items()})
    transformer.to(device).eval()
    text_encoder.to(device).eval()
    return ToyModel(transformer, text_encoder, tokenizer)


def token_grid(size: int = RESOLUTION) -> tuple[int, int]:
    """Token grid (h, w) of a ``size`` px square image."""
    if size % (2 * PIXELS_PER_TOKEN):
        raise ValueError(f"size must be a multiple of {2 * PIXELS_PER_TOKEN} px, got {size}")
    return size // PIXELS_PER_TOKEN, size // PIXELS_PER_TOKEN


def initial_noise(seeds: Sequence[int], size: int = RESOLUTION) -> torch.Tensor:
    """Full-resolution starting noise (B, tokens, 48); sample b from ``torch.Generator().manual_seed(seeds[b])``."""
    h, w = token_grid(size)
    return torch.stack([torch.randn(h * w, 4 * LATENT_CHANNELS, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


def renoise_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample for RALU's renoising, offset from the noise seeds."""
    return [torch.Generator().manual_seed(10_000_019 + int(s)) for s in seeds]


def generate(model: ToyModel, prompts: Sequence[str], seeds: Sequence[int], config: RALUConfig | Baseline,
             guidance_scale: float = 1.0, size: int = RESOLUTION) -> tuple[torch.Tensor, SampleResult]:
    """Sample one image per (prompt, seed) pair with a RALU config or a baseline, in one batch.

    A Baseline without a shift uses the toy's stock shift :data:`BASE_SHIFT`. Returns images
    (B, 3, size, size) in [-1, 1] and the sampler's result (layout, per-stage tokens and times).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    if isinstance(config, Baseline) and config.shift is None:
        config = Baseline(config.steps, BASE_SHIFT, name=config.name)
    grid = token_grid(size)
    table_positions = config.table_positions if isinstance(config, RALUConfig) else "stock_then_full"
    with torch.no_grad():
        result = sample(model.adapter(prompts, guidance_scale, grid, table_positions), initial_noise(seeds, size),
                        config, grid, generator=renoise_generators(seeds))
        images = decode_tokens(result.latents.float(), grid).clamp(-1.0, 1.0)
    return images, result


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean PSNR in dB of uint8 images (B, H, W, 3) against references of the same shape (inf when equal).

    The demo's quick similarity figure; the quality benchmark uses scikit-image's metrics.
    """
    mse = ((images.astype(np.float64) - reference.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(255.0**2 / mse)))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def comparison_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], captions: Sequence[str],
                    scale: int = 3) -> Image.Image:
    """One picture: a row per method, a column per prompt.

    rows: (label, images (B, H, W, 3) uint8, regions (B, h, w) bool or None). The regions, the
    low-res tokens a RALU run upsampled early, are outlined in cyan over that row's images.
    """
    from PIL import Image, ImageDraw

    batch, height, width, _ = rows[0][1].shape
    cell_h, cell_w, label_w, header_h, pad = height * scale, width * scale, 120, 56, 4
    canvas = Image.new("RGB", (label_w + batch * (cell_w + pad), header_h + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for b, caption in enumerate(captions):
        text = "\n".join(_wrap(caption, max(8, cell_w // 6)))  # PIL's default font: about 6 px a character
        draw.multiline_text((label_w + b * (cell_w + pad), 2), text, fill="black", spacing=1)
    for r, (label, images, regions) in enumerate(rows):
        top = header_h + r * (cell_h + pad)
        draw.multiline_text((4, top + cell_h // 2 - 12), "\n".join(_wrap(label, 18)), fill="black")
        for b in range(batch):
            left = label_w + b * (cell_w + pad)
            canvas.paste(Image.fromarray(images[b]).resize((cell_w, cell_h), Image.NEAREST), (left, top))
            if regions is not None:
                _outline(draw, regions[b], left, top, cell_h // regions.shape[1], cell_w // regions.shape[2])
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        if lines[-1] and len(lines[-1]) + 1 + len(word) > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return lines


def _outline(draw, mask: np.ndarray, left: int, top: int, cell_h: int, cell_w: int) -> None:
    """Draw the boundary of the union of the True cells of ``mask`` (h, w)."""
    h, w = mask.shape
    colour = (0, 255, 255)
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            x0, y0 = left + j * cell_w, top + i * cell_h
            x1, y1 = x0 + cell_w - 1, y0 + cell_h - 1
            if i == 0 or not mask[i - 1, j]:
                draw.line([(x0, y0), (x1, y0)], fill=colour)
            if i == h - 1 or not mask[i + 1, j]:
                draw.line([(x0, y1), (x1, y1)], fill=colour)
            if j == 0 or not mask[i, j - 1]:
                draw.line([(x0, y0), (x0, y1)], fill=colour)
            if j == w - 1 or not mask[i, j + 1]:
                draw.line([(x1, y0), (x1, y1)], fill=colour)


# --- training ---------------------------------------------------------------------------------

def _flow_loss(model: ToyModel, images: torch.Tensor, captions: list[str], generator: torch.Generator,
               drop: float) -> torch.Tensor:
    x0 = encode_images(images)
    batch, tokens, _ = x0.shape
    side = int(math.isqrt(tokens))
    keep = torch.rand(batch, generator=generator) >= drop
    captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
    states, pooled = model.text_encoder(model.tokenizer(captions))
    u = torch.rand(batch, generator=generator)
    sigma = torch.as_tensor(shift_sigmas(u.double().numpy(), BASE_SHIFT), dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=generator)
    if model.architecture == "sd3":  # the latent image; the model patchifies and crops its table itself
        x0, noise = tokens_to_latent(x0, (side, side)), tokens_to_latent(noise, (side, side))
        x = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        v = model.transformer(hidden_states=x, timestep=sigma * 1000, pooled_projections=pooled,
                              encoder_hidden_states=states, return_dict=False)[0]
        return F.mse_loss(v, noise - x0)
    x = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    img_ids = torch.cat([torch.zeros(tokens, 1), grid_positions((side, side))], dim=1)
    v = model.transformer(hidden_states=x, timestep=sigma, pooled_projections=pooled, encoder_hidden_states=states,
                          txt_ids=torch.zeros(states.shape[1], 3), img_ids=img_ids, return_dict=False)[0]
    return F.mse_loss(v, noise - x0)


def _save_averaged(model: ToyModel, params: list[nn.Parameter], averaged: list[torch.Tensor], folder: Path) -> None:
    """Save the model with its EMA weights, leaving the training weights in place."""
    current = [p.detach().clone() for p in params]
    with torch.no_grad():
        for a, p in zip(averaged, params):
            p.copy_(a)
        save_toy(model, folder)
        for c, p in zip(current, params):
            p.copy_(c)


def train(out: str | Path, steps: int, seed: int = 0, batch: int = 32, lr: float = 1e-3, warmup: int = 100,
          ema: float = 0.999, caption_drop: float = 0.1, threads: int = 2, log_every: int = 50,
          checkpoint_every: int = 500, max_minutes: float | None = None, init: str | Path | None = None,
          stop_at: int | None = None, architecture: str = "flux") -> dict:
    """Train the toy model from scratch and save it (EMA weights) with a ``training.json`` record.

    Step 2k trains on 64 px images, step 2k+1 on 32 px images of new scenes; the data of step
    i comes from ``shapes.scenes(seed · 1_000_003 + i, batch)``. AdamW, linear warm-up then
    cosine decay to 0 over ``steps``. Every ``checkpoint_every`` steps the EMA weights so far go
    to ``out/checkpoint`` (to look at samples while training runs). ``max_minutes`` stops early
    (recorded as ``stopped_at``) if the machine is slower than planned; the schedule stays the
    one of ``steps``, so a run that finishes is reproduced by the same arguments, and one that
    stopped early by ``stop_at=stopped_at`` (stop before that step, deterministically). ``init``
    continues from a saved model (its weights, a fresh optimiser and schedule); the saved
    ``training.json`` then keeps the earlier run's record under ``previous``. architecture:
    "flux" (the shipped model) or "sd3" (its SD3-architecture twin, :data:`SD3_DATA_DIR`).
    """
    torch.set_num_threads(threads)
    out = Path(out)
    previous = None
    if init is not None:
        model = load_toy(init)
        record_file = Path(init) / "training.json"
        previous = json.loads(record_file.read_text()) if record_file.is_file() else None
    else:
        model = build_toy(seed, architecture)
    architecture = model.architecture
    model.transformer.train()
    params = list(model.transformer.parameters()) + list(model.text_encoder.parameters())
    averaged = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, i / steps))))
    generator = torch.Generator().manual_seed(seed)
    start, losses, log, stopped_at = time.perf_counter(), [], [], None
    for step in range(steps):
        if (max_minutes is not None and time.perf_counter() - start > 60 * max_minutes) or step == stop_at:
            stopped_at = step
            break
        size = RESOLUTION if step % 2 == 0 else RESOLUTION // 2
        batch_scenes = scenes(seed * 1_000_003 + step, batch)
        images = torch.from_numpy(render_batch(batch_scenes, size))
        loss = _flow_loss(model, images, [s.caption for s in batch_scenes], generator, caption_drop)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for a, p in zip(averaged, params):
                a.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            entry = dict(step=step + 1, loss=round(recent, 5), seconds=round(time.perf_counter() - start, 1))
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _save_averaged(model, params, averaged, out / "checkpoint")
    _save_averaged(model, params, averaged, out)
    n_params = sum(p.numel() for p in params)
    record = dict(
        command=f"python -m ralu.toy train --out {out} --steps {steps} --seed {seed} --batch {batch} --lr {lr} "
                f"--ema {ema}"
                + (f" --max-minutes {max_minutes:g}" if max_minutes else "") + (f" --init {init}" if init else "")
                + (f" --stop-at {stop_at}" if stop_at is not None else "")
                + (f" --arch {architecture}" if architecture != "flux" else ""),
        seed=seed, steps=steps, stopped_at=stopped_at, max_minutes=max_minutes, batch=batch, lr=lr, warmup=warmup,
        ema=ema, caption_drop=caption_drop,
        threads=threads, resolutions=[RESOLUTION, RESOLUTION // 2], sigma_sampling=f"shift_{BASE_SHIFT:g}(uniform)",
        architecture=architecture, transformer=ARCHITECTURES[architecture][1], text_dim=TEXT_DIM, max_words=MAX_WORDS,
        parameters=dict(transformer=sum(p.numel() for p in model.transformer.parameters()),
                        text_encoder=sum(p.numel() for p in model.text_encoder.parameters()), total=n_params),
        final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 5),
        wall_seconds=round(time.perf_counter() - start, 1),
        torch=torch.__version__, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), log=log, previous=previous)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def sample_grid(model: ToyModel, batch_scenes: Sequence, steps: int = 50,
                guidances: Sequence[float] = (1.0, DEFAULT_GUIDANCE)) -> Image.Image:
    """A column per scene: its training picture, then the baseline's sample of its caption (seed 0) per guidance."""
    captions = [scene.caption for scene in batch_scenes]
    rows = [("training data", to_uint8(torch.from_numpy(render_batch(list(batch_scenes), RESOLUTION))), None)]
    for guidance in guidances:
        images, _ = generate(model, captions, [0] * len(captions), Baseline(steps), guidance)
        rows.append((f"baseline {steps}, guidance {guidance:g}", to_uint8(images), None))
    return comparison_grid(rows, captions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ralu.toy", description="Train the toy shapes model.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("samples", help="a grid of data and baseline samples (docs/toy_samples.png)")
    show.add_argument("--out", type=Path, required=True)
    show.add_argument("--count", type=int, default=8)
    show.add_argument("--seed", type=int, default=99, help="scenes whose captions are the prompts")
    run = commands.add_parser("train", help="train from scratch and save weights + training.json")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--steps", type=int, default=2000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch", type=int, default=32)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--max-minutes", type=float, help="stop early (and say so in training.json) after this long")
    run.add_argument("--init", type=Path, help="continue from this saved model instead of a fresh one")
    run.add_argument("--stop-at", type=int, help="stop before this step (reproduces a run that stopped early)")
    run.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is saved")
    run.add_argument("--arch", choices=tuple(ARCHITECTURES), default="flux",
                     help="transformer architecture (sd3: the SD3-architecture twin, ralu/data/toy_sd3)")
    args = parser.parse_args(argv)
    if args.command == "samples":
        torch.set_num_threads(2)
        sample_grid(load_toy(), scenes(args.seed, args.count)).save(args.out)
        print(f"saved {args.out}")
        return 0
    record = train(args.out, args.steps, args.seed, args.batch, args.lr, ema=args.ema, threads=args.threads,
                   max_minutes=args.max_minutes, init=args.init, stop_at=args.stop_at,
                   architecture=args.arch)
    print(f"saved {args.out}: {record['stopped_at'] or record['steps']} steps, final loss {record['final_loss']}, "
          f"{record['wall_seconds']:.0f} s, {record['parameters']['total']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
