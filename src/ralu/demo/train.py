"""Training of the toy shapes model: rectified flow on rendered scenes, resumable.

``python -m ralu.demo.train --out DIR --steps N`` trains from scratch (or ``--init DIR`` from a
saved model) and saves the EMA weights with a ``training.json`` record: the command, the loss
curve, the wall time and the host. Every ``--checkpoint-every`` steps the full training state
(weights, EMA, optimiser, step, random state) goes to ``DIR/checkpoint``; ``--resume`` continues
from there exactly, so a run survives an interrupted session.

Objective: ``x_σ = (1-σ)·x0 + σ·ε``, target ``v = ε - x0``. σ is drawn from a 50/50 mixture of the
stock schedule's density at shift 3 (``shift_3(u)``, mostly high noise, where the layout is
decided) and uniform (low noise too, where edges are sharpened). Full (64 px) and half (32 px)
batches alternate, so the model also knows the half resolution RALU's first stage runs at.
10% of the captions are dropped so that classifier-free guidance works.
``--relation-pairs W`` pairs each scene with its mirror image under the opposite relation word, on the
same noise, and adds W × the MSE of the pair's velocity difference: the toy otherwise reads captions as a
bag of words (``tools/relation_probe.py``). ``--kind-pairs W`` does the same with the scene whose two
objects exchange kinds (:func:`~ralu.demo.shapes.kinds_swapped`): the kind words bound the other way round.

The same script trains on a GPU (``--device cuda``, bfloat16 autocast there by default), with
``--workers`` processes rendering the batches ahead; a step's batch depends on the step alone, so
the run is the same whichever device renders it and however many workers there are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..layout import grid_positions, tokens_to_latent
from ..schedule import shift_sigmas
from .model import (ARCHITECTURES, AUTOCAST_CHOICES, BASE_SHIFT, RESOLUTION, ToyModel, bf16_is_fast, build_toy,
                    cpu_facts, encode_images, load_toy, save_toy)
from .shapes import PARTNERS, render_batch, scenes

UNIFORM_SHARE = 0.5  # share of σ drawn uniformly; the rest from shift_3(uniform)


def sample_sigmas(batch: int, generator: torch.Generator,
                  band: tuple[float, float, float] | None = None) -> torch.Tensor:
    """(B,) training noise levels: shift_3(u) or u, half and half. ``band = (low, high, share)`` draws that
    share uniformly from [low, high] instead (where the toy decides its shapes; ``tools/shape_onset.py``)."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    shifted = torch.as_tensor(shift_sigmas(u.numpy(), BASE_SHIFT))
    uniform = torch.rand(batch, generator=generator, dtype=torch.float64) < UNIFORM_SHARE
    sigma = torch.where(uniform, u, shifted)
    if band is not None:
        low, high, share = band
        inside = torch.rand(batch, generator=generator, dtype=torch.float64) < share
        sigma = torch.where(inside, low + (high - low) * u, sigma)
    return sigma.float()


def check_band(band: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(low, high, share)`` with 0 <= low < high <= 1 and 0 < share <= 1, else ValueError naming sigma_band."""
    if band is None:
        return None
    if len(band) != 3:
        raise ValueError(f"sigma_band must be three numbers LOW HIGH SHARE, got {list(band)}")
    low, high, share = (float(v) for v in band)
    if not (0.0 <= low < high <= 1.0 and 0.0 < share <= 1.0):
        raise ValueError(f"sigma_band needs 0 <= LOW < HIGH <= 1 and 0 < SHARE <= 1, got {low:g} {high:g} {share:g}")
    return low, high, share


def flow_loss(model: ToyModel, images: torch.Tensor, captions: list[str], generator: torch.Generator,
              drop: float, autocast: bool = False, band: tuple[float, float, float] | None = None,
              pair_weight: float | None = None) -> torch.Tensor:
    """Rectified-flow MSE of the velocity on a batch of images (B, 3, H, W) in [-1, 1], on the
    images' device. The random draws come from ``generator`` (a CPU generator) whatever the device.

    ``pair_weight``: the batch's second half is its first half's partners (:class:`RenderedBatches` with
    ``partner``); each pair shares its noise, noise level and caption drop, and the loss adds
    ``pair_weight`` × the MSE of the pair's velocity difference against its target difference, which is
    non-zero only where the pictures differ: a direct signal to read the word that differs."""
    device = images.device
    x0 = encode_images(images)
    batch, tokens, _ = x0.shape
    side = math.isqrt(tokens)
    if pair_weight is not None and batch % 2:
        raise ValueError(f"batch must be even for pairs, got {batch}")
    draws = batch if pair_weight is None else batch // 2
    keep = torch.rand(draws, generator=generator) >= drop
    sigma = sample_sigmas(draws, generator, band)
    noise = torch.randn((draws, *x0.shape[1:]), generator=generator)
    if pair_weight is not None:  # the partners share their scene's draws
        keep, sigma, noise = keep.repeat(2), sigma.repeat(2), noise.repeat(2, 1, 1)
    captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
    sigma, noise = sigma.to(device), noise.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        states, pooled = model.text_encoder(model.tokenizer(captions).to(device))
        if model.architecture == "sd3":  # the latent image; the model patchifies and crops its table itself
            x0, noise = tokens_to_latent(x0, (side, side)), tokens_to_latent(noise, (side, side))
            x = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
            v = model.transformer(hidden_states=x, timestep=sigma * 1000, pooled_projections=pooled,
                                  encoder_hidden_states=states, return_dict=False)[0]
        else:
            x = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
            img_ids = torch.cat([torch.zeros(tokens, 1), grid_positions((side, side))], dim=1).to(device)
            v = model.transformer(hidden_states=x, timestep=sigma, pooled_projections=pooled,
                                  encoder_hidden_states=states, txt_ids=torch.zeros(states.shape[1], 3, device=device),
                                  img_ids=img_ids, return_dict=False)[0]
    v, target = v.float(), noise - x0
    loss = F.mse_loss(v, target)
    if pair_weight:
        half = batch // 2
        loss = loss + pair_weight * F.mse_loss(v[:half] - v[half:], target[:half] - target[half:])
    return loss


def check_pairs(relation_pairs: float | None, kind_pairs: float | None, batch: int) -> tuple[str, float] | None:
    """The run's (partner, weight) (a key of :data:`~ralu.demo.shapes.PARTNERS`), or None for independent
    scenes; ValueError naming the parameter unless each weight is None or >= 0, at most one is set, and
    the batch is even when one is."""
    given = {name: weight for name, weight in (("relation", relation_pairs), ("kind", kind_pairs))
             if weight is not None}
    for name, weight in given.items():
        if not weight >= 0:
            raise ValueError(f"{name}_pairs must be >= 0, got {weight}")
        if batch % 2:
            raise ValueError(f"{name}_pairs needs an even batch (scene + partner), got batch {batch}")
    if len(given) > 1:
        raise ValueError("relation_pairs and kind_pairs cannot be combined (a batch has one kind of partner)")
    return next(iter(given.items()), None)


def _learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr`` at ``steps``."""
    ramp = min(1.0, (step + 1) / warmup)
    return lr * ramp * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / steps))))


def host(device: torch.device | None = None) -> dict:
    """CPU model, the flags that decide bf16 speed, threads, the torch build and the GPU (if training on one)."""
    model, flags = cpu_facts()
    facts = dict(cpu=model, amx="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags, avx512f="avx512f" in flags,
                 threads=torch.get_num_threads(), torch=torch.__version__)
    if device is not None and device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def training_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when there is one) → the device; ValueError naming the
    ``device`` parameter where it is unknown or absent here."""
    has_cuda = torch.cuda.is_available()
    allowed = "cpu, auto" + (f", cuda or cuda:0..{torch.cuda.device_count() - 1}" if has_cuda else "")
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be one of {allowed}, got {name!r}") from None
    if device.type == "cpu" or (device.type == "cuda" and has_cuda
                                and (device.index or 0) < torch.cuda.device_count()):
        return device
    raise ValueError(f"device {name!r} is not available here; allowed: {allowed}")


class RenderedBatches(torch.utils.data.Dataset):
    """Step i → (images (batch, 3, size, size) in [-1, 1], captions) of ``shapes.scenes(seed · 1_000_003 + i,
    batch)``, 64 px on even steps and 32 px on odd ones: the training data, a function of the step alone.
    With ``partner`` (a key of :data:`~ralu.demo.shapes.PARTNERS`: "relation" for
    :func:`~ralu.demo.shapes.mirrored`, "kind" for :func:`~ralu.demo.shapes.kinds_swapped`), half as
    many scenes followed by their partners."""

    def __init__(self, seed: int, batch: int, partner: str | None = None):
        if partner is not None and partner not in PARTNERS:
            raise ValueError(f"partner must be one of {tuple(PARTNERS)} or None, got {partner!r}")
        if partner is not None and batch % 2:
            raise ValueError(f"batch must be even for pairs, got {batch}")
        self.seed, self.batch, self.partner = seed, batch, partner

    def __getitem__(self, step: int) -> tuple[torch.Tensor, list[str]]:
        size = RESOLUTION if step % 2 == 0 else RESOLUTION // 2
        batch_scenes = scenes(self.seed * 1_000_003 + step, self.batch // 2 if self.partner else self.batch)
        if self.partner:
            batch_scenes += [PARTNERS[self.partner](s) for s in batch_scenes]
        return torch.from_numpy(render_batch(batch_scenes, size)), [s.caption for s in batch_scenes]


def _state(model, params, averaged, optimizer, step, generator, log, elapsed) -> dict:
    """The training state with CPU copies of the weights, so that a run can resume on another device."""
    return dict(params=[p.detach().to("cpu", copy=True) for p in params],
                averaged=[a.to("cpu", copy=True) for a in averaged], optimizer=optimizer.state_dict(), step=step,
                generator=generator.get_state(), log=list(log), elapsed=elapsed)


def _save_averaged(model: ToyModel, params, averaged, folder: Path) -> None:
    """Save the model with its EMA weights, leaving the training weights in place."""
    current = [p.detach().clone() for p in params]
    with torch.no_grad():
        for a, p in zip(averaged, params):
            p.copy_(a)
        save_toy(model, folder)
        for c, p in zip(current, params):
            p.copy_(c)


def train(out: str | Path, steps: int, seed: int = 1, batch: int = 32, lr: float = 1e-3, warmup: int = 200,
          ema: float = 0.999, caption_drop: float = 0.1, threads: int = 1, log_every: int = 50,
          checkpoint_every: int = 250, max_minutes: float | None = None, init: str | Path | None = None,
          resume: bool = False, architecture: str = "flux", autocast: bool | None = None, width: int | None = None,
          stop_before: int | None = None, command: str | None = None, device: str = "cpu", workers: int = 0,
          sigma_band: Sequence[float] | None = None, text_layers: int | None = None,
          text_lr_scale: float = 1.0, relation_pairs: float | None = None, kind_pairs: float | None = None,
          canonical_relations: bool | None = None, phrase_context: bool = False) -> dict:
    """Train and save the EMA weights to ``out`` with ``training.json``; see the module docstring.

    Step i renders ``shapes.scenes(seed · 1_000_003 + i, batch)``: 64 px on even steps, 32 px on
    odd ones (:class:`RenderedBatches`), in ``workers`` processes beside the training (0: in it).
    ``init`` starts from a saved model's weights (fresh optimiser and schedule; the
    earlier record is kept under ``previous``); ``resume`` continues ``out/checkpoint`` exactly.
    ``width`` overrides the transformer's width (heads of 32 channels) of a fresh model.
    ``max_minutes`` stops early, saving what there is (``stopped_at`` in the record); ``stop_before``
    stops before that step, deterministically. ``final_loss`` in the record is the mean loss of the last 100
    steps; a resumed run that stops before training a step reports its log's last entry. ``device``: see
    :func:`training_device`; checkpoints hold CPU tensors, so a run can resume on another device.
    ``autocast``: bfloat16 autocast; None (default) uses it on a GPU and where the CPU has bf16
    instructions (:func:`~ralu.demo.model.bf16_is_fast`). ``sigma_band``: see :func:`sample_sigmas`.
    ``text_layers``: grow the text encoder to this many self-attention blocks
    (:meth:`~ralu.demo.model.ToyTextEncoder.grow`; new blocks start as the identity), before a resume too.
    ``text_lr_scale``: the text encoder's learning rate as a multiple of ``lr`` (same warm-up and decay).
    ``relation_pairs``: train on mirrored pairs with this weight on their difference (``pair_weight`` of
    :func:`flow_loss`; 0 pairs them without the extra term); None trains on independent scenes.
    ``kind_pairs``: the same with kind-swapped partners (:func:`~ralu.demo.shapes.kinds_swapped`); not
    with ``relation_pairs``.
    ``phrase_context``: give the text encoder its phrase projection
    (:meth:`~ralu.demo.model.ToyTextEncoder.add_phrase_context`, starting at zero) if it has none.
    ``canonical_relations``: set the tokenizer's rewriting of relations
    (:class:`~ralu.demo.model.ToyTokenizer`; saved with the model); None keeps the model's own.
    """
    device = training_device(device)
    band = check_band(sigma_band)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 renders in the training process), got {workers}")
    pairs = check_pairs(relation_pairs, kind_pairs, batch)
    partner, pair_weight = pairs if pairs else (None, None)
    autocast = (device.type == "cuda" or bf16_is_fast()) if autocast is None else autocast
    torch.set_num_threads(threads)
    out = Path(out)
    previous = None
    if init is not None:
        model = load_toy(init)
        record_file = Path(init) / "training.json"
        previous = json.loads(record_file.read_text()) if record_file.is_file() else None
    else:
        overrides = {} if width is None else dict(num_attention_heads=width // 32)
        model = build_toy(seed, architecture, **overrides)
    if text_layers is not None:
        torch.manual_seed(seed)  # the new blocks' random weights (their zeroed outputs aside)
        model.text_encoder.grow(text_layers)
    if canonical_relations is not None:
        model.tokenizer.canonical_relations = canonical_relations
    if phrase_context:
        model.text_encoder.add_phrase_context()
    model.transformer.to(device).train()
    model.text_encoder.to(device).train()
    if not text_lr_scale > 0:
        raise ValueError(f"text_lr_scale must be > 0, got {text_lr_scale}")
    groups = [dict(params=list(model.transformer.parameters()), scale=1.0),
              dict(params=list(model.text_encoder.parameters()), scale=float(text_lr_scale))]
    params = [p for group in groups for p in group["params"]]
    averaged = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, betas=(0.9, 0.99), fused=True)
    generator = torch.Generator().manual_seed(seed)
    first, log, elapsed = 0, [], 0.0
    state_file = out / "checkpoint" / "state.pt"
    if resume:
        if not state_file.is_file():
            raise FileNotFoundError(f"--resume: no training state at {state_file}")
        state = torch.load(state_file, weights_only=False, map_location="cpu")
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
        averaged = [a.to(device) for a in state["averaged"]]
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first, log, elapsed = state["step"], state["log"], state["elapsed"]
        print(f"resumed at step {first} ({elapsed / 60:.1f} min so far)", flush=True)
    batches = torch.utils.data.DataLoader(RenderedBatches(seed, batch, partner),
                                          batch_size=None,
                                          sampler=range(first, steps), num_workers=workers,
                                          pin_memory=device.type == "cuda")
    start, losses, stopped_at = time.perf_counter() - elapsed, [], None
    for step, (images, captions) in zip(range(first, steps), batches):
        if step == stop_before or (max_minutes is not None and time.perf_counter() - start > 60 * max_minutes):
            stopped_at = step
            break
        images = images.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr * group["scale"], warmup)
        loss = flow_loss(model, images, captions, generator, caption_drop, autocast, band, pair_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(averaged, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # nothing after this is worth the time; the saved weights stay as they were
            raise FloatingPointError(f"training loss is {losses[-1]} at step {step + 1} on {device} (autocast "
                                     f"{'bf16' if autocast else 'off'}); nothing was saved to {out}")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            entry = dict(step=step + 1, loss=round(recent, 5), seconds=round(time.perf_counter() - start, 1))
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_state(model, params, averaged, optimizer, step + 1, generator, log,
                              time.perf_counter() - start), state_file.with_suffix(".tmp"))
            os.replace(state_file.with_suffix(".tmp"), state_file)
            _save_averaged(model, params, averaged, out / "checkpoint")
    _save_averaged(model, params, averaged, out)
    record = dict(
        command=command or " ".join(["python -m ralu.demo.train", *sys.argv[1:]]),
        seed=seed, steps=steps, stopped_at=stopped_at, max_minutes=max_minutes, batch=batch, lr=lr, warmup=warmup,
        ema=ema, caption_drop=caption_drop, autocast_bf16=autocast, resolutions=[RESOLUTION, RESOLUTION // 2],
        sigma_sampling=f"{UNIFORM_SHARE:g} uniform + {1 - UNIFORM_SHARE:g} shift_{BASE_SHIFT:g}(uniform)"
        + ("" if band is None else f"; {band[2]:g} of them replaced by uniform[{band[0]:g}, {band[1]:g}]"),
        architecture=model.architecture, transformer=dict(model.transformer.config),
        text_layers=model.text_encoder.layers, text_lr_scale=text_lr_scale, relation_pairs=relation_pairs,
        kind_pairs=kind_pairs, phrase_context=model.text_encoder.phrase_context,
        canonical_relations=model.tokenizer.canonical_relations,
        parameters=dict(transformer=sum(p.numel() for p in model.transformer.parameters()),
                        text_encoder=sum(p.numel() for p in model.text_encoder.parameters())),
        final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 5) if losses else (log[-1]["loss"] if log else None),
        wall_seconds=round(time.perf_counter() - start, 1), host=host(device), device=str(device),
        workers=workers,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), log=log, previous=previous)
    (out / "training.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ralu.demo.train", description="Train the toy shapes model.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is saved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, help="transformer width of a fresh model (a multiple of 32)")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="flux")
    parser.add_argument("--dtype", choices=tuple(AUTOCAST_CHOICES), default="auto",
                        help="bf16: bfloat16 autocast; auto (default): bf16 on a GPU and where the CPU has bf16 "
                             "instructions")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes rendering batches ahead of the training (default 0: in the training process)")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=50, help="steps per loss entry in the log")
    parser.add_argument("--sigma-band", type=float, nargs=3, metavar=("LOW", "HIGH", "SHARE"),
                        help="draw SHARE of the noise levels uniformly from [LOW, HIGH]")
    parser.add_argument("--text-layers", type=int,
                        help="grow the text encoder to this many self-attention blocks (new ones start as the "
                             "identity)")
    parser.add_argument("--text-lr-scale", type=float, default=1.0,
                        help="the text encoder's learning rate as a multiple of --lr (default 1)")
    parser.add_argument("--relation-pairs", type=float, metavar="WEIGHT",
                        help="train on scenes and their mirrored partners (relation word flipped, same noise), "
                             "adding WEIGHT x the MSE of each pair's velocity difference")
    parser.add_argument("--kind-pairs", type=float, metavar="WEIGHT",
                        help="train on scenes and their kind-swapped partners (the two objects' kinds exchanged, "
                             "same noise), adding WEIGHT x the MSE of each pair's velocity difference")
    parser.add_argument("--phrase-context", action="store_true",
                        help="each word of an object's phrase also sees its phrase's mean embedding through a "
                             "learnt projection that starts at zero (saved with the model)")
    parser.add_argument("--canonical-relations", action="store_true", default=None,
                        help="the tokenizer reads 'A right of B' as 'B left of A' and 'A below B' as 'B above A' "
                             "(saved with the model)")
    parser.add_argument("--max-minutes", type=float, help="stop early after this long, saving what there is")
    parser.add_argument("--init", type=Path, help="start from this saved model (fresh optimiser and schedule)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint exactly")
    args = parser.parse_args(argv)
    try:  # bad input fails here in one line, before any model is built
        training_device(args.device)
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        check_band(args.sigma_band)
        if args.text_layers is not None and args.text_layers < 0:
            raise ValueError(f"--text-layers must be >= 0, got {args.text_layers}")
        if not args.text_lr_scale > 0:
            raise ValueError(f"--text-lr-scale must be > 0, got {args.text_lr_scale}")
        check_pairs(args.relation_pairs, args.kind_pairs, args.batch)
    except ValueError as error:
        parser.error(str(error))
    record = train(args.out, args.steps, args.seed, args.batch, args.lr, ema=args.ema, threads=args.threads,
                   log_every=args.log_every, checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes,
                   init=args.init, resume=args.resume, architecture=args.arch,
                   autocast=AUTOCAST_CHOICES[args.dtype], width=args.width, device=args.device, workers=args.workers,
                   sigma_band=args.sigma_band, text_layers=args.text_layers, text_lr_scale=args.text_lr_scale,
                   relation_pairs=args.relation_pairs, kind_pairs=args.kind_pairs, phrase_context=args.phrase_context,
                   canonical_relations=args.canonical_relations)
    print(f"saved {args.out}: {record['stopped_at'] or record['steps']} steps, final loss {record['final_loss']}, "
          f"{record['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
