"""Does the toy model's prediction depend on the caption's word order and relation, or only on its words?

    python tools/relation_probe.py MODEL_DIR [NOISES=16] [SIGMA=0.9]

MODEL_DIR may be a running training's ``checkpoint/`` folder: with the ``state.pt`` there, the probe reads the
weights being trained rather than their slow moving average saved beside them, to see a change early.

One transformer call on ``SIGMA · ε`` (the noisy latent of a blank image; NOISES noises ε, seeds 0..) per
caption. For caption pairs that differ in one respect it prints the mean norm of the velocity difference,
over the noises, relative to the pair that swaps one colour word (a change the model is known to follow):

- relation word: "left of" ↔ "right of" and "above" ↔ "below" (same objects, same order);
- object order: the two objects swapped around the same relation word;
- kind swap: the two objects' kinds exchanged (the same words, so the same bag of words);
- colour: one object's colour changed (the reference, 1.0); then the same change made in the token
  sequence only (pooled vector kept) and in the pooled vector only (sequence kept): which path carries it.

A model that binds words to places and objects scores the first three near the colour change; one that reads
the caption as a bag of words scores them near 0 (the relation words change the bag a little; the swaps not at
all). It then prints the predicted clean image's red-minus-blue balance, left half minus right half and top minus bottom, for
"a large red circle <relation> a large blue circle": a model that knows the relation puts red where the caption
says, and the four relations' balances differ in sign. (With the tokenizer's ``canonical_relations``, a flipped
relation word and swapped objects are read as one caption, so those two rows agree.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ralu.demo.model import decode_tokens, initial_noise, load_toy, token_grid
from ralu.demo.shapes import COLOURS
from ralu.layout import grid_positions

# two base captions, and for each kind of change the two captions changed in that one respect
BASES = ("a large red circle left of a large blue square", "a small green triangle above a large purple circle")
CHANGED = {
    "relation word": ("a large red circle right of a large blue square",
                      "a small green triangle below a large purple circle"),
    "object order": ("a large blue square left of a large red circle",
                     "a large purple circle above a small green triangle"),
    "kind swap": ("a large red square left of a large blue circle", "a small green circle above a large purple triangle"),
    "colour": ("a large yellow circle left of a large blue square", "a small orange triangle above a large purple circle"),
}
PAIRS = {name: list(zip(BASES, changed)) for name, changed in CHANGED.items()}


def velocity(model, states: torch.Tensor, pooled: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """v on every noise for one caption's encoding (states (1, T, D), pooled (1, D)), through the adapter the
    sampler uses, without guidance: (noises, tokens, 48)."""
    from ralu.adapters.base import Conditioning
    from ralu.adapters.flux import FluxAdapter

    n, grid = len(noise), token_grid()
    conditioning = Conditioning(states.expand(n, -1, -1), pooled.expand(n, -1), torch.zeros(states.shape[1], 3))
    adapter = FluxAdapter(model.transformer, conditioning, decoder=decode_tokens)
    return adapter.velocity(sigma * noise, adapter.prepare_positions(grid_positions(grid)[None], grid), sigma)


def velocities(model, captions: list[str], noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """v for every caption on every noise: (len(captions), noises, tokens, 48)."""
    return torch.stack([velocity(model, *model.text_encoder(model.tokenizer([c])), noise, sigma) for c in captions])


@torch.no_grad()
def sensitivities(model, noise: torch.Tensor, sigma: float) -> dict[str, float]:
    """Mean |v(a) - v(b)| of each pair kind in :data:`PAIRS` and of the colour change made through one path,
    relative to the colour change (which is 1.0)."""
    change = {}
    for name, pairs in PAIRS.items():
        norms = []
        for a, b in pairs:
            va, vb = velocities(model, [a, b], noise, sigma)
            norms.append((va - vb).flatten(1).norm(dim=1).mean().item())
        change[name] = sum(norms) / len(norms)
    # which path carries the colour: the token sequence (attention) or the pooled vector (every block's modulation)
    for name in ("sequence only", "pooled only"):
        change[f"colour, {name}"] = 0.0
    for a, b in PAIRS["colour"]:
        (sa, pa), (sb, pb) = (model.text_encoder(model.tokenizer([c])) for c in (a, b))
        base = velocity(model, sa, pa, noise, sigma)
        for name, (states, pooled) in (("sequence only", (sb, pa)), ("pooled only", (sa, pb))):
            moved = (velocity(model, states, pooled, noise, sigma) - base).flatten(1).norm(dim=1).mean().item()
            change[f"colour, {name}"] += moved / len(PAIRS["colour"])
    reference = change["colour"]
    return {name: value / reference for name, value in change.items()} | {"reference": reference}


def load_probed(folder: str):
    """The saved model in ``folder``, with the training weights of ``folder/state.pt`` where there is one."""
    model = load_toy(folder)
    state_file = Path(folder) / "state.pt"
    if state_file.is_file():
        params = list(model.transformer.parameters()) + list(model.text_encoder.parameters())
        saved = torch.load(state_file, weights_only=False, map_location="cpu")["params"]
        if [p.shape for p in params] != [q.shape for q in saved]:
            raise SystemExit(f"{state_file} does not hold this model's parameters")
        with torch.no_grad():
            for p, q in zip(params, saved):
                p.copy_(q)
    return model


@torch.no_grad()
def main(argv: list[str]) -> int:
    folder = argv[0]
    count = int(argv[1]) if len(argv) > 1 else 16
    sigma = float(argv[2]) if len(argv) > 2 else 0.9
    torch.set_num_threads(2)
    model = load_probed(folder)
    if model.architecture != "flux":
        raise SystemExit(f"model must be the FLUX toy (the probe goes through FluxAdapter), got {model.architecture}")
    noise = initial_noise(list(range(count)))
    ratios = sensitivities(model, noise, sigma)
    print(f"{folder}: sigma {sigma:g}, {count} noises; mean |v(a) - v(b)| relative to a colour change "
          f"({ratios.pop('reference'):.3f}):")
    for name, ratio in ratios.items():
        print(f"  {name:22s} {ratio:.3f}")
    red, blue = (torch.tensor(COLOURS[c]).view(1, 3, 1, 1) for c in ("red", "blue"))
    print("red minus blue in the predicted clean image (left - right, top - bottom):")
    for relation in ("left of", "right of", "above", "below"):
        v = velocities(model, [f"a large red circle {relation} a large blue circle"], noise, sigma)[0]
        image = (decode_tokens(sigma * noise - sigma * v, token_grid()) + 1) / 2
        balance = (image * red).sum(1) - (image * blue).sum(1)  # (noises, H, W)
        half = balance.shape[-1] // 2
        print(f"  {relation:8s} {(balance[..., :half].mean() - balance[..., half:].mean()).item():+.4f} "
              f"{(balance[:, :half].mean() - balance[:, half:].mean()).item():+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
