"""Does the toy model tell a scene from its training partner? The pair residual at several noise levels.

    python tools/pair_residual.py MODEL_DIR [PARTNER=kind] [SCENES=32]

PARTNER is a key of ``shapes.PARTNERS``: "kind" (``shapes.kinds_swapped``: the two objects exchange kinds, so
the caption has the same words bound the other way round) or "relation" (``shapes.mirrored``). SCENES held-out
scenes (``shapes.scenes(777, ...)``; for "kind", those whose two objects differ in kind) are rendered beside
their partners and noised with the same noise (seeds 0..) to σ = 0.9, 0.7, 0.5 and 0.3. For each σ it prints

    residual = ‖(v_a − v_b) − (t_a − t_b)‖² / ‖t_a − t_b‖²

(v: the model's velocity without guidance, t = ε − x0 its target): 1 for a model whose prediction does not
change with what the pair differs in, 0 for one that predicts the difference exactly. It is what
``--kind-pairs`` / ``--relation-pairs`` train down (``ralu.demo.train.flow_loss``), measured on scenes the
training never drew. MODEL_DIR may be a running training's ``checkpoint/`` (its ``state.pt`` training
weights are read, as ``tools/relation_probe.py`` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relation_probe import load_probed  # noqa: E402

from ralu.demo import shapes  # noqa: E402
from ralu.demo.model import encode_images, initial_noise, token_grid  # noqa: E402
from ralu.layout import grid_positions  # noqa: E402

SIGMAS = (0.9, 0.7, 0.5, 0.3)


def residual(v_a: torch.Tensor, v_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor) -> float:
    """‖(v_a − v_b) − (t_a − t_b)‖² / ‖t_a − t_b‖² over the whole batch."""
    difference = t_a - t_b
    return ((v_a - v_b - difference).pow(2).sum() / difference.pow(2).sum()).item()


def pair_scenes(partner: str, count: int) -> tuple[list[shapes.Scene], list[shapes.Scene]]:
    """``count`` held-out scenes that their partner changes (two kinds for "kind", two objects for
    "relation"), and the partners."""
    if partner not in shapes.PARTNERS:
        raise SystemExit(f"PARTNER must be one of {tuple(shapes.PARTNERS)}, got {partner!r}")
    changed = (lambda s: len({o.kind for o in s.objects}) == 2) if partner == "kind" else (
        lambda s: s.relation is not None)
    scenes = [s for s in shapes.scenes(777, 40 * count) if changed(s)][:count]
    return scenes, [shapes.PARTNERS[partner](s) for s in scenes]


@torch.no_grad()
def residuals(model, scenes: list[shapes.Scene], partners: list[shapes.Scene]) -> dict[float, float]:
    """σ → residual for these pairs, one transformer call per σ on the scenes and their partners."""
    from ralu.adapters.base import Conditioning
    from ralu.adapters.flux import FluxAdapter

    x0 = encode_images(torch.from_numpy(shapes.render_batch(scenes + partners, 64)))
    noise = initial_noise(range(len(scenes))).repeat(2, 1, 1)
    states, pooled = model.text_encoder(model.tokenizer([s.caption for s in scenes + partners]))
    adapter = FluxAdapter(model.transformer, Conditioning(states, pooled, torch.zeros(states.shape[1], 3)))
    grid = token_grid()
    positions = adapter.prepare_positions(grid_positions(grid)[None], grid)
    half, out = len(scenes), {}
    for sigma in SIGMAS:
        v = adapter.velocity((1 - sigma) * x0 + sigma * noise, positions, sigma).float()
        t = noise - x0
        out[sigma] = residual(v[:half], v[half:], t[:half], t[half:])
    return out


def main(argv: list[str]) -> int:
    folder = argv[0]
    partner = argv[1] if len(argv) > 1 else "kind"
    count = int(argv[2]) if len(argv) > 2 else 32
    torch.set_num_threads(2)
    model = load_probed(folder)
    if model.architecture != "flux":
        raise SystemExit(f"model must be the FLUX toy (the probe goes through FluxAdapter), got {model.architecture}")
    scenes, partners = pair_scenes(partner, count)
    values = residuals(model, scenes, partners)
    print(f"{folder}: {partner} pairs, {len(scenes)} held-out scenes; residual (1 = the difference ignored): "
          + " ".join(f"σ {sigma:g} {value:.3f}" for sigma, value in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
