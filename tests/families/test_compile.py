"""torch.compile of the transformer across RALU's three stages (token counts change per stage)."""

from __future__ import annotations

import pytest

from ralu import RALUFluxPipeline


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_transformer_runs_all_stages_and_matches_eager(tiny_flux_path, backend):
    import torch._dynamo

    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=["a red circle", "a blue star"], height=256, width=256, output_type="latent",
                  config="flux-dev-7x")
    eager = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # dynamic=True marks the token dimension dynamic up front: one graph serves every stage
    pipe.transformer = torch.compile(pipe.transformer, backend=backend, dynamic=True)
    try:
        compiled = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs)
        again = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs)
    finally:
        pipe.transformer = pipe.transformer._orig_mod
    assert torch.equal(compiled.regions, eager.regions)
    # the same kernels traced instead of dispatched one by one: float32 rounding only
    assert torch.allclose(compiled.images, eager.images, atol=1e-4, rtol=0)
    assert torch.equal(again.images, compiled.images)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # stages 1 and 3 share positions across the batch, stage 2 takes per-sample RoPE: a few
    # graphs (4 measured with torch 2.13), not one per step (10 steps)
    assert 1 <= frames <= 6, f"{frames} graphs compiled"
