"""Cache hooks across RALU's stages (diffusers ``hooks``): state resets at resolution changes."""

from __future__ import annotations

import torch


def reset_cache_state(transformer: torch.nn.Module) -> None:
    """Forget every stateful hook's state (cached residuals, step counters) under ``transformer``.

    Called at each stage boundary: cache hooks keep tensors shaped like the previous call and
    count the steps of one schedule, while a new stage has a new token count and its own steps
    (DIFFUSERS-NOTES.md §4). This is what ``CacheMixin._reset_stateful_cache`` does, for any model.
    """
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)
