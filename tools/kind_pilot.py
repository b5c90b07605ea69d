"""Pilot: does the toy learn to draw the asked kind quickly when there are only two kinds (circle, square)?

    python tools/kind_pilot.py train OUT STEPS [THREADS=1]     # from the shipped weights, lr 1e-3
    python tools/kind_pilot.py readback MODEL_DIR [CAPTIONS=64] [STEPS=50] [THREADS=1]

Both replace ``shapes.KINDS`` by ("circle", "square") for the whole process before anything reads it: the
training scenes, the held-out captions (``toy_prompts``) and the read-back's templates then know those two
kinds only (chance for shape 0.5). The vocabulary is unchanged, so the shipped weights load as they are.
``readback`` is ``tools/readback.py`` on that domain. The result is in docs/judge.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ralu.demo.shapes as shapes

shapes.KINDS = ("circle", "square")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "readback"):
        print("usage:\n" + "\n".join(__doc__.strip().splitlines()[2:4]), file=sys.stderr)
        return 2
    if argv[0] == "train":
        from ralu.demo import train
        from ralu.demo.model import DATA_DIR

        out, steps, threads = argv[1], argv[2], (argv[3:] or ["1"])[0]
        return train.main(["--init", str(DATA_DIR),
                           "--out", out, "--steps", steps, "--lr", "0.001", "--threads", threads])
    sys.path.insert(0, str(Path(__file__).parent))
    import readback

    return readback.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
