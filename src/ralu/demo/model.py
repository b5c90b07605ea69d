"""The toy text-to-image model of coloured shapes: its latent codec, text encoder, weights and sampling.

- Latent space: pixel space, no VAE. A 64×64 RGB image in [-1, 1] is split into 2×2 pixel
  blocks (``pixel_unshuffle``) and each channel's four pixels go through the orthonormal 2×2
  Haar transform, giving a 12-channel latent at 32×32. Like a VAE latent, a latent pixel is then
  a summary of its neighbourhood (the block mean, ×2, plus three detail coefficients), so that
  replicating a latent pixel replicates its block's mean colour. The transform is exact and
  orthonormal: white noise stays white. Packed 2×2 latent patches make 16×16 = 256 tokens of 48
  values; at half resolution (32 px) 8×8 = 64 tokens, each covering 4×4 px.
- Transformer: ``diffusers.FluxTransformer2DModel`` (:data:`TRANSFORMER_CONFIG`), RoPE on
  ``img_ids = [0, row, col]``, no guidance embedding; or its SD3-architecture twin
  (:data:`SD3_TRANSFORMER_CONFIG`).
- Text: a word-level tokenizer over :data:`shapes.VOCABULARY` (optionally rewriting "A right of B"
  as "B left of A" and "A below B" as "B above A", so that the first object named is always the left or
  upper one) and :class:`ToyTextEncoder` (learned word + position embeddings, optionally self-attention
  blocks over the caption; pooled = mean over the words), trained with the model.

Training is :mod:`ralu.demo.train`; :func:`load_toy` loads the shipped weights.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Baseline, RALUConfig
from ..layout import PATCH, latent_to_tokens, tokens_to_latent
from .shapes import OPPOSITE, VOCABULARY

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toy"
SD3_DATA_DIR = DATA_DIR.parent / "toy_sd3"  # the SD3-architecture twin
RESOLUTION = 64  # px at full resolution
BASE_SHIFT = 3.0  # the baseline's scheduler shift (the training σ density leans on it too)
MAX_WORDS = 12  # the longest caption has 10 words
TEXT_DIM = 64
LATENT_CHANNELS = 12  # 3 colours × 4 Haar coefficients
PIXELS_PER_TOKEN = 4  # a token packs 2×2 latent pixels, each a 2×2 pixel block
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale of the demo and the quality benchmark

TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=PATCH * PATCH * LATENT_CHANNELS, num_layers=2,
                          num_single_layers=4, attention_head_dim=32, num_attention_heads=8,
                          joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=False,
                          axes_dims_rope=(8, 12, 12))
# The SD3-architecture twin: same latent, tokens, text encoder and training, but an
# ``SD3Transformer2DModel`` that patchifies the 12-channel latent itself (patch 2, so the same
# 16×16 tokens of 48 values) and adds a centre crop of an absolute sin-cos table. The table keeps
# SD3's proportions: SD3 has 96 cells for its 64-patch (1024 px) grid, this one 24 for 16 patches,
# so a full-resolution image crops cells 4..19 and a half-resolution one cells 8..15, as SD3 crops
# 16..79 at 1024 px and 32..63 at 512 px.
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
    """Images (B, 3, H, W) in [-1, 1], H and W multiples of 4 → tokens (B, H/4·W/4, 48) in raster order."""
    return latent_to_tokens(_haar(F.pixel_unshuffle(images, 2)))


def decode_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, h·w, 48) on the token grid (h, w) → images (B, 3, 4h, 4w) in [-1, 1] (clipped)."""
    return F.pixel_shuffle(_haar(tokens_to_latent(tokens.float(), grid)), 2).clamp(-1.0, 1.0)


# canonical_relations: the relation words a caption is rewritten away from (objects swapped, word flipped)
REWRITTEN_RELATIONS = ("right of", "below")


class ToyTokenizer:
    """Word-level tokenizer over a fixed vocabulary; id 0 pads. Unknown words raise ValueError.

    ``canonical_relations``: read "A right of B" as "B left of A" and "A below B" as "B above A" (the same
    scene), so that the first object named is always the left or upper one. The words' order then says where
    each object goes, which the toy's small transformer learns within 500 steps (``tools/relation_probe.py``);
    read as written, where side depends on order and word together, it never did (docs/judge.md).
    """

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, max_words: int = MAX_WORDS,
                 canonical_relations: bool = False):
        self.vocabulary = tuple(vocabulary)
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.max_words = max_words
        self.canonical_relations = canonical_relations

    def words(self, caption: str) -> list[str]:
        """The words the model reads: the caption's, rewritten where ``canonical_relations`` says."""
        words = caption.split()
        relation = " ".join(words[4:-4])
        if self.canonical_relations and len(words) > 8 and relation in REWRITTEN_RELATIONS:
            return words[-4:] + OPPOSITE[relation].split() + words[:4]
        return words

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions → (B, max_words) int64 ids, padded with 0."""
        ids = torch.zeros(len(captions), self.max_words, dtype=torch.long)
        for b, caption in enumerate(captions):
            words = self.words(caption)
            unknown = [w for w in words if w not in self.index]
            if unknown or len(words) > self.max_words:
                raise ValueError(f"prompt must use at most {self.max_words} words of {self.vocabulary[1:]}, "
                                 f"got {caption!r}" + (f" (unknown: {unknown})" if unknown else ""))
            ids[b, : len(words)] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids


PHRASE_START = VOCABULARY.index("a")  # every object's phrase begins with "a"
RELATION_WORD_IDS = tuple(VOCABULARY.index(w) for w in ("left", "right", "of", "above", "below"))


def phrase_means(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """For each word of an object's phrase (from an "a" up to the next "a", relation words and pads left
    out), the mean of its phrase's embeddings; zero for the other tokens. embeddings (B, T, D), ids (B, T)
    of :data:`VOCABULARY` → (B, T, D)."""
    phrase = torch.cumsum(ids == PHRASE_START, dim=1)  # 1 for the first object's words, 2 for the second's
    member = (phrase > 0) & (ids != 0) & ~torch.isin(ids, torch.tensor(RELATION_WORD_IDS, device=ids.device))
    onehot = F.one_hot(phrase * member, ids.shape[1] + 1)[..., 1:].to(embeddings.dtype)  # (B, T, phrases)
    means = onehot.transpose(1, 2) @ embeddings / onehot.sum(1)[..., None].clamp(min=1.0)
    return onehot @ means


class ToyTextEncoder(nn.Module):
    """Word + position embeddings, then ``layers`` pre-norm self-attention blocks (4 heads, MLP 4×dim) that
    let every word see the whole caption, as a real text encoder's states do: ids (B, T) → states (B, T, dim)
    and pooled (B, dim), the mean over the words (pads excluded).

    With ``layers=0`` the states are the embeddings alone: a colour word then says nothing of its object's
    place in the caption, and the transformer must bind words to objects itself (the toy's weights up to
    version 2 were trained so). :meth:`grow` adds blocks that start as the identity.

    ``phrase_context``: each word of an object's phrase ("a <size> <colour> <kind>") also gets a learnt
    projection of its phrase's mean word embedding (:func:`phrase_means`), so that the kind word's state
    carries its object's colour and size, as a real text encoder's states carry their phrase. The
    projection starts at zero (the identity); :meth:`add_phrase_context` adds it to a trained encoder.
    """

    def __init__(self, vocab_size: int = len(VOCABULARY), max_words: int = MAX_WORDS, dim: int = TEXT_DIM,
                 layers: int = 0, phrase_context: bool = False):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(max_words, dim))
        nn.init.normal_(self.words.weight, std=0.5)
        nn.init.normal_(self.positions, std=0.1)
        self.blocks = nn.ModuleList()
        self.grow(layers)
        self.phrase: nn.Linear | None = None
        if phrase_context:
            self.add_phrase_context()

    def add_phrase_context(self) -> None:
        """Add the phrase projection (see the class docstring), zero so that the states are unchanged."""
        if self.phrase is None:
            dim = self.words.embedding_dim
            self.phrase = nn.Linear(dim, dim).to(self.positions.device)
            nn.init.zeros_(self.phrase.weight)
            nn.init.zeros_(self.phrase.bias)

    @property
    def phrase_context(self) -> bool:
        return self.phrase is not None

    def grow(self, layers: int) -> None:
        """Add blocks up to ``layers`` in all; each new one starts as the identity (its residual branches'
        output projections are zero), so a trained encoder's states are unchanged until training moves them."""
        if layers < len(self.blocks):
            raise ValueError(f"text encoder layers can only grow, from {len(self.blocks)}; got {layers}")
        dim = self.words.embedding_dim
        device = self.positions.device
        while len(self.blocks) < layers:
            block = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=4 * dim, dropout=0.0,
                                               batch_first=True, norm_first=True).to(device)
            for linear in (block.self_attn.out_proj, block.linear2):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            self.blocks.append(block)

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.words(ids)
        states = embeddings + self.positions[: ids.shape[1]]
        if self.phrase is not None:
            states = states + self.phrase(phrase_means(embeddings, ids))
        for block in self.blocks:  # no padding mask: the empty prompt is all pads and must still give states
            states = block(states)
        present = (ids != 0).to(states.dtype)[..., None]
        pooled = (states * present).sum(1) / present.sum(1).clamp(min=1.0)
        return states, pooled


@dataclass
class ToyModel:
    """The shipped model: transformer, text encoder and tokenizer."""

    transformer: nn.Module
    text_encoder: ToyTextEncoder
    tokenizer: ToyTokenizer

    @property
    def architecture(self) -> str:
        """"flux" or "sd3": which diffusers transformer class the model is."""
        return "sd3" if type(self.transformer).__name__ == "SD3Transformer2DModel" else "flux"

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (states (B, T, 64), pooled (B, 64)) on the transformer's device."""
        device = next(self.transformer.parameters()).device
        return self.text_encoder(self.tokenizer(prompts).to(device))

    def adapter(self, prompts: Sequence[str], guidance_scale: float = 1.0, grid: tuple[int, int] | None = None,
                table_positions: str = "stock_then_full"):
        """A sampler adapter for these prompts; ``guidance_scale`` > 1 adds classifier-free guidance
        against the empty prompt. grid and table_positions matter for the SD3 architecture only."""
        from ..adapters.base import Conditioning
        from ..adapters.common import Guidance

        states, pooled = self.encode_prompt(prompts)
        text_ids = torch.zeros(states.shape[1], 3, device=states.device)
        guidance = None
        if guidance_scale > 1:
            negative, negative_pooled = self.encode_prompt([""] * len(prompts))
            guidance = Guidance(Conditioning(negative, negative_pooled, text_ids), guidance_scale)
        if self.architecture == "sd3":
            from ..adapters.sd3 import SD3Adapter

            return SD3Adapter(self.transformer, Conditioning(states, pooled), grid or token_grid(), guidance,
                              table_positions=table_positions, decoder=decode_tokens)
        from ..adapters.flux import FluxAdapter

        return FluxAdapter(self.transformer, Conditioning(states, pooled, text_ids), guidance, decoder=decode_tokens)


def _transformer_class(name: str):
    import diffusers

    if name not in {cls for cls, _ in ARCHITECTURES.values()}:
        raise ValueError(f"toy transformer must be one of {[cls for cls, _ in ARCHITECTURES.values()]}, got {name!r}")
    return getattr(diffusers, name)


def build_toy(seed: int = 0, architecture: str = "flux", **overrides) -> ToyModel:
    """A freshly initialised (untrained) toy model, seeded; architecture "flux" or "sd3".

    overrides: transformer config fields to change (e.g. ``num_attention_heads``).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {tuple(ARCHITECTURES)}, got {architecture!r}")
    name, config = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    return ToyModel(_transformer_class(name)(**{**config, **overrides}), ToyTextEncoder(), ToyTokenizer())


def save_toy(model: ToyModel, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``transformer/`` (``save_pretrained``), ``text_encoder.safetensors`` and ``text_encoder.json``.

    dtype: storage precision (float16 halves the package size; loading casts back to float32).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # a cast copy, so the caller's model keeps its precision; nn.Module.to, not diffusers' to(), which warns
    # about "modules kept in float32: []" on every dtype cast
    nn.Module.to(copy.deepcopy(model.transformer), dtype).save_pretrained(folder / "transformer")
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.text_encoder.state_dict().items()}
    save_file(state, str(folder / "text_encoder.safetensors"))
    (folder / "text_encoder.json").write_text(json.dumps(dict(
        vocabulary=list(model.tokenizer.vocabulary), max_words=model.tokenizer.max_words,
        dim=model.text_encoder.words.embedding_dim, layers=model.text_encoder.layers,
        canonical_relations=model.tokenizer.canonical_relations,
        phrase_context=model.text_encoder.phrase_context), indent=1) + "\n")
    return folder


def model_spec(transformer_config: dict | None = None, guidance: float = DEFAULT_GUIDANCE):
    """The toy as a :class:`ralu.models.ModelSpec`, for the cost model and the planner (``ralu plan --model
    toy``): its transformer config (default: the shipped one's), its scheduler shift, 4 px per token, 50
    steps, and two branches under classifier-free guidance."""
    from types import MappingProxyType

    from ..models import ModelSpec

    if transformer_config is None:
        transformer_config = json.loads((DATA_DIR / "transformer" / "config.json").read_text())
    return ModelSpec(name="toy", family="flux", pipeline="toy", hub="ralu/data/toy",
                     transformer=MappingProxyType(dict(transformer_config)),
                     scheduler=MappingProxyType(dict(shift=BASE_SHIFT, use_dynamic_shifting=False)),
                     decode_flops=(0.0, 0.0), steps=50, text_tokens=MAX_WORDS, branches=2 if guidance > 1 else 1,
                     preset="flux-dev-4x", pixels_per_token=PIXELS_PER_TOKEN)


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
    tokenizer = ToyTokenizer(spec["vocabulary"], spec["max_words"], spec.get("canonical_relations", False))
    phrase_context = spec.get("phrase_context", False)
    if phrase_context and list(spec["vocabulary"]) != list(VOCABULARY):
        raise ValueError(f"{folder}: phrase_context needs the toy's own vocabulary {list(VOCABULARY)}")
    text_encoder = ToyTextEncoder(len(spec["vocabulary"]), spec["max_words"], spec["dim"], spec.get("layers", 0),
                                  phrase_context)
    text_encoder.load_state_dict({k: v.float() for k, v in load_file(str(folder / "text_encoder.safetensors")).items()})
    transformer.to(device).eval()
    text_encoder.to(device).eval()
    return ToyModel(transformer, text_encoder, tokenizer)


def cpu_facts() -> tuple[str, frozenset[str]]:
    """The CPU's model name and instruction-set flags from /proc/cpuinfo (empty where it can't be read)."""
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model, flags


def bf16_is_fast() -> bool:
    """Whether bfloat16 matmuls run natively here (AMX or AVX512-BF16); elsewhere torch emulates them,
    several times slower than float32, so the toy's "auto" dtype picks float32 there."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_facts()[1])


# the toy's --dtype choices → bfloat16 autocast on/off; None: bf16_is_fast() decides
AUTOCAST_CHOICES = {"auto": None, "bf16": True, "fp32": False}


def token_grid(size: int = RESOLUTION, width: int | None = None) -> tuple[int, int]:
    """Token grid (h, w) of a ``size`` x ``width`` px image (square when width is None)."""
    width = size if width is None else width
    for name, value in (("height", size), ("width", width)):
        if value <= 0 or value % (2 * PIXELS_PER_TOKEN):
            raise ValueError(f"{name} must be a positive multiple of {2 * PIXELS_PER_TOKEN} px, got {value}")
    return size // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN


def initial_noise(seeds: Sequence[int], size: int = RESOLUTION, width: int | None = None) -> torch.Tensor:
    """Full-resolution starting noise (B, tokens, 48); sample b from ``torch.Generator().manual_seed(seeds[b])``."""
    h, w = token_grid(size, width)
    return torch.stack([torch.randn(h * w, PATCH * PATCH * LATENT_CHANNELS,
                                    generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def renoise_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample for RALU's renoising, offset from the noise seeds."""
    return [torch.Generator().manual_seed(10_000_019 + int(s)) for s in seeds]


def generate(model: ToyModel, prompts: Sequence[str], seeds: Sequence[int], config: RALUConfig | Baseline,
             guidance_scale: float = 1.0, size: int = RESOLUTION, width: int | None = None, on_step=None,
             bfloat16: bool = False):
    """Sample one image per (prompt, seed) pair with a RALU config or a baseline, in one batch.

    A Baseline without a shift uses the toy's stock shift :data:`BASE_SHIFT`; a RALUConfig with
    ``base_shift="auto"`` is matched to it. on_step: the sampler's step callback. bfloat16: run the
    transformer under bfloat16 autocast (about twice as fast on CPUs with bf16 instructions; the
    sampler's updates stay float32). The noise is drawn on the CPU, so a seed starts from the same noise on
    any device the model is on. Returns images (B, 3, size, width) in [-1, 1] and the sampler's
    result (layout, per-stage tokens and times).
    """
    from ..sampler import sample

    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    config = config.resolve(BASE_SHIFT) if hasattr(config, "resolve") else config
    grid = token_grid(size, width)
    table_positions = config.table_positions if isinstance(config, RALUConfig) else "stock_then_full"
    device = next(model.transformer.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
        adapter = model.adapter(prompts, guidance_scale, grid, table_positions)
        result = sample(adapter, initial_noise(seeds, size, width).to(device), config, grid,
                        generator=renoise_generators(seeds), on_step=on_step)
        images = decode_tokens(result.latents, grid)
    return images, result
