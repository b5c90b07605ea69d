"""``ralu bench calibrate``: time one transformer call at several token counts on this device and dtype,
and save the latency model that ``ralu schedule`` and ``ralu plan`` use for predicted speedups.

    ralu bench calibrate --model flux-dev [--tokens 64 256 1024 4096] [--blocks 1 1] [--dtype bfloat16]

Saved to ``~/.cache/ralu/calibration/<model>.json`` (``--out`` to choose), where ``ralu schedule``
and ``ralu plan`` find it for that model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ralu import models
from ralu.calibrate import DEFAULT_TOKENS, calibrate, default_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ralu bench calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="flux-dev", choices=models.names(), help="whose width to time")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                        help="image token counts to time (cover the sizes you run: a 1024² FLUX image has 4096)")
    parser.add_argument("--blocks", type=int, nargs=2, default=(1, 1), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--text-tokens", type=int, help="default: the model's")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="default: ~/.cache/ralu/calibration/<model>.json")
    args = parser.parse_args(argv)
    if min(args.tokens) < 1 or args.reps < 1 or min(args.blocks) < 0 or sum(args.blocks) < 1:
        parser.error("--tokens and --reps must be >= 1, --blocks at least one block")
    latency = calibrate(args.model, args.tokens, tuple(args.blocks), args.text_tokens, args.dtype, args.device,
                        args.reps)
    print(f"{latency.describe()}; host {latency.host.get('cpu')}, GPU {latency.host.get('gpu')}")
    print(f"{'tokens':>8}{'seconds':>12}{'spread':>9}{'s per 1k tokens':>17}")
    for n, s, spread in zip(latency.tokens, latency.seconds, latency.spread):
        print(f"{n:>8}{s:>12.4f}{spread:>8.1%}{1000 * s / n:>17.4f}")
    path = latency.save(args.out or default_path(args.model))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
