"""Analytic FLOPs of FLUX and SD3 transformer calls and of whole sampling schedules (docs/method.md, "Cost").

Counts follow the block structure of diffusers' ``FluxTransformer2DModel`` and
``SD3Transformer2DModel`` (SD3 and SD3.5 blocks). A multiply-add is
2 FLOPs. Counted: every linear layer (weights only; the bias add is elementwise) and the two
attention matmuls ``QKᵀ`` and ``AV`` (``2·2·S²·d`` per block over ``S = n + m`` tokens).
Not counted: elementwise work (activations, norms, modulation scale/shift/gate, residuals,
RoPE, softmax, the sinusoidal timestep features). It scales as S·d or S²·heads against the
counted S·d² and S²·d: well under 1% at FLUX.1-dev's width (the softmax, ~5 FLOPs per score and
head, is the largest part). FlopCounterMode leaves it out too. Pure Python: no torch, no diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .config import Baseline, RALUConfig

# FLUX.1-dev's transformer/config.json (black-forest-labs/FLUX.1-dev), read-only.
FLUX_DEV_CONFIG: Mapping[str, Any] = MappingProxyType(dict(
    patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56)))

REQUIRED_KEYS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                 "joint_attention_dim", "pooled_projection_dim")
TIMESTEP_FEATURES = 256  # width of the sinusoidal timestep/guidance features (diffusers' Timesteps(256))
MLP_RATIO = 4  # FeedForward(mult=4) in double blocks, mlp_ratio=4.0 in single blocks
PIXELS_PER_TOKEN = 16  # FLUX: VAE downsamples by 8, a token packs a 2x2 latent patch


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _token_counts(config: Mapping[str, Any], required: tuple[str, ...], image_tokens: int,
                  text_tokens: int) -> tuple[int, int]:
    """(image_tokens, text_tokens) checked as counts, after checking that ``config`` has the ``required`` keys."""
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"config lacks the transformer keys {missing}; needs {list(required)}")
    return _count("image_tokens", image_tokens), _count("text_tokens", text_tokens)


def _width(config: Mapping[str, Any]) -> int:
    """The model width d: attention heads x head dimension."""
    return _count("num_attention_heads", config["num_attention_heads"]) * _count(
        "attention_head_dim", config["attention_head_dim"])


def _linear(tokens: int, fan_in: int, fan_out: int) -> int:
    """A dense layer on ``tokens`` rows: a multiply and an add per weight and row (biases not counted)."""
    return 2 * tokens * fan_in * fan_out


def flux_call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int = 512) -> float:
    """FLOPs of one FluxTransformer2DModel forward for one sample (batch 1).

    config: the transformer's config (diffusers' config.json keys, e.g. ``transformer.config``
        or :data:`FLUX_DEV_CONFIG`); ``patch_size``, ``out_channels`` and ``guidance_embeds``
        default as in diffusers.
    image_tokens: n packed image tokens in the call; text_tokens: m T5 tokens.
    A batch of B samples (or true CFG's second pass) costs B times this.
    """
    n, m = _token_counts(config, REQUIRED_KEYS, image_tokens, text_tokens)
    double = _count("num_layers", config["num_layers"])
    single = _count("num_single_layers", config["num_single_layers"])
    d = _width(config)
    in_channels = _count("in_channels", config["in_channels"])
    out_channels = config.get("out_channels") or in_channels
    patch = config.get("patch_size", 1)
    s = n + m
    hidden = MLP_RATIO * d

    attention = 2 * 2 * s * s * d  # QKᵀ and AV over the joint sequence, all heads together
    # Embeddings: per token for x and the text; per sample for time (+ guidance) and pooled text.
    embed = _linear(n, in_channels, d) + _linear(m, _count("joint_attention_dim", config["joint_attention_dim"]), d)
    time_mlp = _linear(1, TIMESTEP_FEATURES, d) + _linear(1, d, d)
    embed += time_mlp * (2 if config.get("guidance_embeds", False) else 1)
    embed += _linear(1, _count("pooled_projection_dim", config["pooled_projection_dim"]), d) + _linear(1, d, d)
    # Double-stream block: AdaLayerNormZero (6d) for each stream, q/k/v and output per stream,
    # joint attention, and a GELU MLP (d → 4d → d) per stream.
    double_block = (2 * _linear(1, d, 6 * d) + 3 * _linear(s, d, d) + attention + _linear(s, d, d)
                    + _linear(s, d, hidden) + _linear(s, hidden, d))
    # Single-stream block: AdaLayerNormZeroSingle (3d), q/k/v over the concatenated sequence, the
    # MLP branch d → 4d, and proj_out over the concatenated [attention, MLP] features (5d → d).
    single_block = (_linear(1, d, 3 * d) + 3 * _linear(s, d, d) + attention + _linear(s, d, hidden)
                    + _linear(s, d + hidden, d))
    head = _linear(1, d, 2 * d) + _linear(n, d, patch * patch * out_channels)  # norm_out modulation, proj_out
    return float(embed + double * double_block + single * single_block + head)


SD3_REQUIRED_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "joint_attention_dim",
                     "pooled_projection_dim")


def is_sd3_config(config: Mapping[str, Any]) -> bool:
    """True for an SD3Transformer2DModel config (it has ``caption_projection_dim``; FLUX has single layers)."""
    return config.get("_class_name") == "SD3Transformer2DModel" or (
        "caption_projection_dim" in config and "num_single_layers" not in config)


def sd3_call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int = 333) -> float:
    """FLOPs of one SD3Transformer2DModel forward for one sample (batch 1; CFG runs two).

    image_tokens: n patch tokens (2x2 patches of the 8x latent: 4096 at 1024²); text_tokens: m
    (77 CLIP + 256 T5 = 333 with the pipeline's defaults). Joint blocks: AdaLayerNormZero for each
    stream (SD3.5's dual-attention blocks: 9d for the image stream), q/k/v/out per stream, joint
    attention, GELU MLPs d → 4d → d per stream; the last block (``context_pre_only``) has no
    context output, MLP or 6d modulation (a 2d AdaLayerNormContinuous instead). Dual-attention
    layers add a second, image-only attention. Same counting rules as :func:`flux_call_flops`.
    """
    n, m = _token_counts(config, SD3_REQUIRED_KEYS, image_tokens, text_tokens)
    layers = _count("num_layers", config["num_layers"])
    d = _width(config)
    context_width = config.get("caption_projection_dim") or d
    if context_width != d:
        raise ValueError(f"caption_projection_dim ({context_width}) must equal heads x head_dim ({d})")
    in_channels = _count("in_channels", config["in_channels"])
    out_channels = config.get("out_channels") or in_channels
    patch = config.get("patch_size", 2)
    dual = set(config.get("dual_attention_layers") or ())
    s, hidden = n + m, MLP_RATIO * d

    embed = (_linear(n, in_channels * patch * patch, d) + _linear(m, _count("joint_attention_dim", config["joint_attention_dim"]), d)
             + _linear(1, TIMESTEP_FEATURES, d) + _linear(1, d, d)
             + _linear(1, _count("pooled_projection_dim", config["pooled_projection_dim"]), d) + _linear(1, d, d))
    total = embed
    for index in range(layers):
        last = index == layers - 1
        block = _linear(1, d, (9 if index in dual else 6) * d) + _linear(1, d, (2 if last else 6) * d)
        block += 3 * _linear(n, d, d) + 3 * _linear(m, d, d) + 2 * 2 * s * s * d + _linear(n, d, d)
        block += _linear(n, d, hidden) + _linear(n, hidden, d)
        if not last:
            block += _linear(m, d, d) + _linear(m, d, hidden) + _linear(m, hidden, d)
        if index in dual:
            block += 4 * _linear(n, d, d) + 2 * 2 * n * n * d
        total += block
    head = _linear(1, d, 2 * d) + _linear(n, d, patch * patch * out_channels)
    return float(total + head)


# --- FLUX.2 (Flux2Transformer2DModel) -----------------------------------------------------------------

FLUX2_REQUIRED_KEYS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                       "joint_attention_dim")


def flux2_call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int = 512) -> float:
    """FLOPs of one Flux2Transformer2DModel forward for one sample (batch 1; klein base's CFG runs two).

    image_tokens: n packed tokens (4096 at 1024²); text_tokens: m (512 with the stock pipelines:
    the prompt is padded to ``max_sequence_length`` and all of it is attended to). Unlike FLUX.1,
    no layer has a bias and the modulation is computed once per call and shared by all blocks (6d
    per stream for the double blocks, 3d for the single ones); the MLPs are SwiGLU (d → 2·r·d → r·d
    → d, r = ``mlp_ratio``), fused with q/k/v and the output in the single blocks. The guidance
    embedder counts when ``guidance_embeds`` (FLUX.2 [dev]: the pipeline always passes guidance).
    Same counting rules as :func:`flux_call_flops`.
    """
    n, m = _token_counts(config, FLUX2_REQUIRED_KEYS, image_tokens, text_tokens)
    double = _count("num_layers", config["num_layers"])
    single = _count("num_single_layers", config["num_single_layers"])
    d = _width(config)
    in_channels = _count("in_channels", config["in_channels"])
    out_channels = config.get("out_channels") or in_channels
    patch = config.get("patch_size", 1)
    features = config.get("timestep_guidance_channels", TIMESTEP_FEATURES)
    hidden = int(d * config.get("mlp_ratio", 3.0))  # as diffusers: int(dim * mlp_ratio)
    s = n + m

    def swiglu(tokens: int) -> int:
        return _linear(tokens, d, 2 * hidden) + _linear(tokens, hidden, d)

    attention = 2 * 2 * s * s * d
    time_mlp = _linear(1, features, d) + _linear(1, d, d)
    embed = _linear(n, in_channels, d) + _linear(m, _count("joint_attention_dim", config["joint_attention_dim"]), d)
    embed += time_mlp * (2 if config.get("guidance_embeds", True) else 1)
    modulation = 2 * _linear(1, d, 6 * d) + _linear(1, d, 3 * d)  # once per call, shared by the blocks
    double_block = 4 * _linear(s, d, d) + attention + swiglu(n) + swiglu(m)  # q, k, v, out per stream
    single_block = _linear(s, d, 3 * d + 2 * hidden) + attention + _linear(s, d + hidden, d)
    head = _linear(1, d, 2 * d) + _linear(n, d, patch * patch * out_channels)  # norm_out modulation, proj_out
    return float(embed + modulation + double * double_block + single * single_block + head)

# --- Qwen-Image (QwenImageTransformer2DModel) ------------------------------------------------------------

QWENIMAGE_REQUIRED_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                           "joint_attention_dim")


def qwenimage_call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int = 128) -> float:
    """FLOPs of one QwenImageTransformer2DModel forward for one sample (batch 1; true CFG runs two).

    image_tokens: n packed 2x2-patch tokens (4096 at 1024²); text_tokens: m Qwen2.5-VL tokens (the
    prompt's own length: the pipeline pads only to the longest prompt of the batch). Embedders
    ``img_in`` (64 → d) and ``txt_in`` (J → d; its RMSNorm is elementwise), the timestep MLP
    (256 → d → d); per block an ``img_mod`` and a ``txt_mod`` (d → 6d), q/k/v/out per stream, joint
    attention over n + m tokens, a GELU MLP d → 4d → d per stream; ``norm_out`` (d → 2d) and
    ``proj_out`` (d → p²·out_channels). Same counting rules as :func:`flux_call_flops`.
    """
    n, m = _token_counts(config, QWENIMAGE_REQUIRED_KEYS, image_tokens, text_tokens)
    layers = _count("num_layers", config["num_layers"])
    d = _width(config)
    in_channels = _count("in_channels", config["in_channels"])
    out_channels = config.get("out_channels") or in_channels
    patch = config.get("patch_size", 2)
    s, hidden = n + m, MLP_RATIO * d

    embed = (_linear(n, in_channels, d) + _linear(m, _count("joint_attention_dim", config["joint_attention_dim"]), d)
             + _linear(1, TIMESTEP_FEATURES, d) + _linear(1, d, d))
    block = (2 * _linear(1, d, 6 * d) + 4 * _linear(s, d, d) + 2 * 2 * s * s * d
             + _linear(s, d, hidden) + _linear(s, hidden, d))
    head = _linear(1, d, 2 * d) + _linear(n, d, patch * patch * out_channels)
    return float(embed + layers * block + head)


def qwenimage_vae_decode_flops(vae_config: Mapping[str, Any], height: int, width: int) -> float:
    """FLOPs of one AutoencoderKLQwenImage decode of one frame to ``height`` x ``width`` px (batch 1).

    Built on the meta device and counted by FlopCounterMode, as :func:`vae_decode_flops` does for
    AutoencoderKL: the causal 3-D convolutions and the mid-block attention. Imports torch and diffusers.
    """
    import torch
    from diffusers import AutoencoderKLQwenImage
    from torch.utils.flop_counter import FlopCounterMode

    keys = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLQwenImage.from_config(keys)
    factor = 2 ** len(vae.config.temperal_downsample)
    latents = torch.empty(1, vae.config.z_dim, 1, height // factor, width // factor, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        vae.decode(latents)
    return float(counter.get_total_flops())

# --- Z-Image (ZImageTransformer2DModel) ------------------------------------------------------------------

ZIMAGE_REQUIRED_KEYS = ("dim", "n_layers", "n_refiner_layers", "in_channels", "cap_feat_dim")
ZIMAGE_SEQ_MULTIPLE = 32  # image and caption tokens are padded to multiples of 32 (diffusers' SEQ_MULTI_OF)
ZIMAGE_TIME_WIDTHS = (256, 1024)  # TimestepEmbedder: 256 sinusoidal features → 1024 → min(dim, 256)


def zimage_call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int = 512) -> float:
    """FLOPs of one ZImageTransformer2DModel forward for one sample (batch 1; CFG's batch of two costs twice).

    image_tokens: n 2x2-patch tokens (4096 at 1024²); text_tokens: m caption tokens (the prompt's,
    padding removed by the pipeline; at most ``max_sequence_length``). Each stream is padded to a
    multiple of 32 with pad tokens that are computed like the others. Blocks: ``n_refiner_layers``
    modulated noise-refiner blocks on the image tokens, as many unmodulated context-refiner blocks
    on the caption, ``n_layers`` modulated blocks on the joint sequence; each block has q/k/v/out
    (d → d), the two attention matmuls and a SwiGLU feed-forward (w1, w3: d → int(8d/3), w2 back);
    a modulated block adds its adaLN linear (min(d, 256) → 4d). The final layer (adaLN → d, then
    d → 4·C) runs on the whole joint sequence. Same counting rules as :func:`flux_call_flops`.
    """
    n, m = _token_counts(config, ZIMAGE_REQUIRED_KEYS, image_tokens, text_tokens)
    n += -n % ZIMAGE_SEQ_MULTIPLE
    m += -m % ZIMAGE_SEQ_MULTIPLE
    d = _count("dim", config["dim"])
    layers, refiners = _count("n_layers", config["n_layers"]), _count("n_refiner_layers", config["n_refiner_layers"])
    patch_features = 4 * _count("in_channels", config["in_channels"])  # 2x2 patches of one frame
    hidden, adaln = int(d / 3 * 8), min(d, TIMESTEP_FEATURES)

    def block(s: int, modulated: bool) -> int:
        return ((_linear(1, adaln, 4 * d) if modulated else 0) + 4 * _linear(s, d, d) + 2 * 2 * s * s * d
                + 2 * _linear(s, d, hidden) + _linear(s, hidden, d))

    features, mid = ZIMAGE_TIME_WIDTHS
    embed = (_linear(1, features, mid) + _linear(1, mid, adaln) + _linear(n, patch_features, d)
             + _linear(m, _count("cap_feat_dim", config["cap_feat_dim"]), d))
    stacks = refiners * (block(n, True) + block(m, False)) + layers * block(n + m, True)
    head = _linear(1, adaln, d) + _linear(n + m, d, patch_features)
    return float(embed + stacks + head)


def call_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int) -> float:
    """One transformer call for one sample, of the family the config's ``_class_name`` names
    (FLUX.1 when it names none and has single layers, SD3 when it has ``caption_projection_dim``)."""
    counters = {"FluxTransformer2DModel": flux_call_flops, "SD3Transformer2DModel": sd3_call_flops,
                "Flux2Transformer2DModel": flux2_call_flops, "QwenImageTransformer2DModel": qwenimage_call_flops,
                "ZImageTransformer2DModel": zimage_call_flops}
    name = config.get("_class_name")
    if name in counters:
        return counters[name](config, image_tokens, text_tokens)
    if is_sd3_config(config):
        return sd3_call_flops(config, image_tokens, text_tokens)
    return flux_call_flops(config, image_tokens, text_tokens)


def vae_decode_flops(vae_config: Mapping[str, Any], height: int, width: int) -> float:
    """FLOPs of one AutoencoderKL decode to a ``height`` x ``width`` px image (batch 1).

    The decoder is built on the meta device from its config and counted by torch's
    FlopCounterMode (convolutions, matmuls, the mid-block attention): shapes only, no weights,
    no memory. RALU's region selection decodes once at half resolution (H/2 x W/2).
    Imports torch and diffusers (unlike the rest of this module).
    """
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    keys = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(keys)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.empty(1, vae.config.latent_channels, height // factor, width // factor, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        vae.decode(latents)
    return float(counter.get_total_flops())


def image_tokens(height: int, width: int, multiple: int = PIXELS_PER_TOKEN) -> int:
    """Packed FLUX image tokens of a ``height`` x ``width`` px image (16x16 px each).

    multiple: the size both sides must be a multiple of (32 for RALU, which halves the token grid).
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} px, got {value!r}")
    return (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


@dataclass(frozen=True)
class ScheduleCost:
    """Transformer cost of a schedule, per stage.

    steps: model calls; tokens: image tokens per call; call_flops: FLOPs of one call;
    flops: FLOPs of the stage ((steps - skipped) x call_flops). One sample, text tokens included.
    skipped: calls per stage whose block stack a cache skipped (counted as free: a skipped call
        costs only the embedders and, for TeaCache, one normalisation).
    """

    steps: tuple[int, ...]
    tokens: tuple[int, ...]
    call_flops: tuple[float, ...]
    flops: tuple[float, ...]
    skipped: tuple[int, ...] = ()

    @property
    def total(self) -> float:
        return sum(self.flops)

    @property
    def shares(self) -> tuple[float, ...]:
        """Fraction of the total spent in each stage."""
        return tuple(f / self.total for f in self.flops)


def schedule_cost(
    schedule: RALUConfig | Baseline,
    full_tokens: int,
    model_config: Mapping[str, Any] = FLUX_DEV_CONFIG,
    text_tokens: int = 512,
    skipped: Sequence[int] | None = None,
) -> ScheduleCost:
    """Per-stage transformer FLOPs of a RALU schedule or a baseline.

    full_tokens: image tokens at full resolution (4096 for FLUX at 1024²); a multiple of 4 for RALU.
    skipped: calls per stage that a temporal cache skipped (TeaCache, FirstBlockCache, ...).
    """
    if isinstance(schedule, RALUConfig):
        steps = schedule.steps
        if _count("full_tokens", full_tokens) % 4 or full_tokens == 0:
            raise ValueError(f"full_tokens must be a positive multiple of 4 for RALU (a 2x2 token grid per "
                             f"low-res token), got {full_tokens!r}")
    elif isinstance(schedule, Baseline):
        steps = (schedule.steps,)
        if _count("full_tokens", full_tokens) == 0:
            raise ValueError("full_tokens must be >= 1, got 0")
    else:
        raise TypeError(f"schedule must be a RALUConfig or a Baseline, got {type(schedule).__name__}")
    skipped = tuple(skipped) if skipped is not None else (0,) * len(steps)
    if len(skipped) != len(steps) or any(not 0 <= s <= n for s, n in zip(skipped, steps)):
        raise ValueError(f"skipped must give, per stage, a count between 0 and the stage's steps {tuple(steps)}, "
                         f"got {skipped}")
    tokens = tuple(schedule.tokens_per_stage(full_tokens))
    per_call = tuple(call_flops(model_config, n, text_tokens) for n in tokens)
    flops = tuple((k - s) * f for k, s, f in zip(steps, skipped, per_call))
    return ScheduleCost(tuple(steps), tokens, per_call, flops, skipped)


@dataclass(frozen=True)
class CombinedSpeedup:
    """Transformer-FLOPs speedups of spatial (RALU) and temporal (cache) savings and their product."""

    spatial: float
    temporal: float

    @property
    def total(self) -> float:
        return self.spatial * self.temporal


def combined_speedup(
    schedule: RALUConfig | Baseline,
    full_tokens: int,
    skipped: Sequence[int],
    baseline_steps: int = 50,
    model_config: Mapping[str, Any] = FLUX_DEV_CONFIG,
    text_tokens: int = 512,
) -> CombinedSpeedup:
    """Split the speedup over a full baseline into RALU's part and a cache's part.

    spatial = baseline / schedule without skips; temporal = schedule without / with skips.
    """
    base = schedule_cost(Baseline(baseline_steps), full_tokens, model_config, text_tokens).total
    plain = schedule_cost(schedule, full_tokens, model_config, text_tokens).total
    cached = schedule_cost(schedule, full_tokens, model_config, text_tokens, skipped).total
    return CombinedSpeedup(base / plain, plain / cached if cached else float("inf"))


def matched_steps(schedule: RALUConfig | Baseline, baseline_steps: int, full_tokens: int,
                  model_config: Mapping[str, Any] = FLUX_DEV_CONFIG, text_tokens: int = 512) -> int:
    """Stock-schedule steps with the schedule's transformer FLOPs: ``round(baseline_steps / speedup)``, at least 1."""
    return max(1, round(baseline_steps / speedup(schedule, full_tokens, baseline_steps, model_config, text_tokens)))


def speedup(
    schedule: RALUConfig | Baseline,
    full_tokens: int,
    baseline_steps: int = 50,
    model_config: Mapping[str, Any] = FLUX_DEV_CONFIG,
    text_tokens: int = 512,
) -> float:
    """Transformer-FLOPs ratio: ``Baseline(baseline_steps)`` at full resolution over ``schedule``.

    Transformer calls only. The text encoders, the final VAE decode and RALU's low-res decode
    for region selection are extra, fixed costs that an end-to-end figure must add (docs/method.md, "Cost").
    """
    baseline = schedule_cost(Baseline(baseline_steps), full_tokens, model_config, text_tokens)
    return baseline.total / schedule_cost(schedule, full_tokens, model_config, text_tokens).total
