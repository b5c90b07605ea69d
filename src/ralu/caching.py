"""Temporal caching across RALU's stages, the diffusers way (``diffusers.hooks``).

- :func:`reset_cache_state` and :func:`cache_context` let any cache hook (diffusers' own
  FirstBlockCache, TaylorSeer, MagCache, FasterCache, PyramidAttentionBroadcast, or ours) run
  under RALU: state is forgotten at every resolution change, and each call carries the stage's
  step index, step count, timestep and σ in the hook's :class:`~diffusers.hooks.hooks.CacheContext`.
- :class:`TeaCacheConfig` / :func:`apply_teacache`: a TeaCache-style cache (Liu et al., 2024,
  "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model"), which diffusers does
  not have. Before the first block, the relative L1 change of the timestep-modulated input
  (``norm1(hidden_states, temb)`` of the first block) since the previous call is rescaled by a
  polynomial and accumulated; while the sum stays under ``threshold`` the whole block stack is
  skipped and the last computed residual (stack output − stack input) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from .adapters.common import cache_context, reset_cache_state

__all__ = ["TeaCacheConfig", "TeaCacheStats", "apply_teacache", "cache_context", "remove_teacache",
           "reset_cache_state", "transformer_blocks"]

# TeaCache's rescaling polynomial for FLUX.1-dev (highest power first), from the TeaCache
# authors' TeaCache4FLUX: fitted to map the modulated-input change onto the model-output change
# on FLUX.1-dev's own 28/50-step schedules. Other models (SD3, a toy model) have no published
# fit: the identity [1, 0] uses the raw change, and thresholds must be chosen accordingly.
FLUX_TEACACHE_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)
IDENTITY_COEFFICIENTS = (1.0, 0.0)

_HEAD_HOOK = "ralu_teacache_head"
_BLOCK_HOOK = "ralu_teacache_block"


@dataclass(frozen=True)
class TeaCacheConfig:
    """threshold: accumulated rescaled change below which the block stack is skipped (paper δ;
        for FLUX.1-dev the TeaCache authors report about 1.5x at 0.25, 1.8x at 0.4, 2x at 0.6).
    coefficients: rescaling polynomial, highest power first (``numpy.poly1d`` order).
    """

    threshold: float = 0.25
    coefficients: tuple[float, ...] = FLUX_TEACACHE_COEFFICIENTS

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold!r}")
        if len(self.coefficients) < 1:
            raise ValueError("coefficients must hold at least one number")

    def rescale(self, change: float) -> float:
        out = 0.0
        for c in self.coefficients:
            out = out * change + c
        return out


class TeaCacheState(BaseState):
    """Per-run state of the TeaCache hooks: the last modulated input, the accumulated change, the residual."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.previous_modulated: torch.Tensor | None = None
        self.accumulated = 0.0
        self.head_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.should_compute = True


class TeaCacheBlockHook(ModelHook):
    """The hook on each transformer block; the head block decides, the tail block stores the residual."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, stats: TeaCacheStats, is_head: bool = False,
                 is_tail: bool = False, config: TeaCacheConfig | None = None):
        super().__init__()
        self.state_manager, self.stats, self.config = state_manager, stats, config
        self.is_head, self.is_tail = is_head, is_tail
        self._metadata = None

    def initialize_hook(self, module):
        from diffusers.utils.torch_utils import unwrap_module

        self._metadata = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module

    def reset_state(self, module):
        self.state_manager.reset()
        return module

    def _arg(self, name, args, kwargs):
        return self._metadata._get_parameter_from_args_kwargs(name, args, kwargs)

    def _pack(self, hidden, encoder):
        if self._metadata.return_encoder_hidden_states_index is None:
            return hidden
        out = [None, None]
        out[self._metadata.return_hidden_states_index] = hidden
        out[self._metadata.return_encoder_hidden_states_index] = encoder
        return tuple(out)

    @torch.compiler.disable
    def _decide(self, state: TeaCacheState, modulated: torch.Tensor) -> bool:
        context = self.state_manager.context
        previous, state.previous_modulated = state.previous_modulated, modulated
        first = previous is None or previous.shape != modulated.shape or state.residual is None
        last = (context.step_index is not None and context.num_inference_steps is not None
                and context.step_index >= context.num_inference_steps - 1)
        if first or last or context.step_index == 0:
            state.accumulated = 0.0
            return True
        change = ((modulated - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        state.accumulated += self.config.rescale(change)
        if state.accumulated < self.config.threshold:
            return False
        state.accumulated = 0.0
        return True

    def new_forward(self, module, *args, **kwargs):
        state = self.state_manager.get_state()
        hidden = self._arg("hidden_states", args, kwargs)
        encoder = (self._arg("encoder_hidden_states", args, kwargs)
                   if self._metadata.return_encoder_hidden_states_index is not None else None)
        if self.is_head:
            temb = self._arg("temb", args, kwargs)
            modulated = module.norm1(hidden, emb=temb)[0]
            state.should_compute = self._decide(state, modulated)
            if state.should_compute:
                state.head_input = hidden
                self.stats.computed += 1
            else:
                self.stats.skipped += 1
            self.stats.decisions.append(state.should_compute)
        if state.should_compute:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.is_tail:
                out_hidden = output[self._metadata.return_hidden_states_index] if isinstance(output, tuple) else output
                state.residual = out_hidden - state.head_input
            return output
        if self.is_tail:
            return self._pack(hidden + state.residual, encoder)
        return self._pack(hidden, encoder)


def transformer_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The transformer's blocks in call order (``transformer_blocks`` then ``single_transformer_blocks``)."""
    blocks = []
    for name, child in transformer.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            blocks.extend((f"{name}.{i}", block) for i, block in enumerate(child))
    return blocks


@dataclass
class TeaCacheStats:
    """Calls of the block stack computed and skipped since the hooks were applied (or ``clear()``).

    decisions: True (computed) / False (skipped) per call, in call order.
    """

    computed: int = 0
    skipped: int = 0
    decisions: list[bool] = field(default_factory=list)

    def clear(self) -> None:
        self.computed = self.skipped = 0
        self.decisions.clear()

    def skipped_per_stage(self, steps: tuple[int, ...]) -> tuple[int, ...]:
        """Skipped calls per stage of one single-branch generation with ``steps`` calls per stage."""
        if len(self.decisions) != sum(steps):
            raise ValueError(f"recorded {len(self.decisions)} calls, but the stages have {sum(steps)} steps")
        out, start = [], 0
        for n in steps:
            out.append(sum(not d for d in self.decisions[start:start + n]))
            start += n
        return tuple(out)


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig = TeaCacheConfig()) -> TeaCacheStats:
    """Register the TeaCache-style hooks on ``transformer``'s blocks; returns their call counters.

    Works with and without RALU, for FLUX and SD3 transformers: every call must run inside
    ``cache_context`` (RALU's adapters do this; with a stock pipeline wrap the call yourself,
    as FluxPipeline already does). Remove with :func:`remove_teacache`.
    """
    blocks = transformer_blocks(transformer)
    if len(blocks) < 2:
        raise ValueError(f"TeaCache needs at least two transformer blocks, found {len(blocks)}")
    manager, stats = StateManager(TeaCacheState), TeaCacheStats()
    for index, (_, block) in enumerate(blocks):
        hook = TeaCacheBlockHook(manager, stats, is_head=index == 0, is_tail=index == len(blocks) - 1, config=config)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _HEAD_HOOK if index == 0 else _BLOCK_HOOK)
    # the root registry caches its list of child registries; new child hooks must be seen
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return stats


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Remove the hooks :func:`apply_teacache` registered."""
    for index, (_, block) in enumerate(transformer_blocks(transformer)):
        HookRegistry.check_if_exists_or_initialize(block).remove_hook(_HEAD_HOOK if index == 0 else _BLOCK_HOOK,
                                                                       recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
