"""Why the toy's training goes NaN on CUDA, then train with the first attention setting that stays finite.

    python tools/gpu_debug.py OUT MINUTES [DEVICE]     # on the device (DEVICE=cuda); tools/gpu_session.sh runs it

The 2026-12-04 GPU session's training (torch 2.11+cu130, H200) hit an illegal memory access, and with
CUDA_LAUNCH_BLOCKING=1 a NaN loss from the first step, while the same code is finite on CPU. This checks,
on one batch: the loaded weights against the file, the forward on the device against the CPU's, and the
loss and one fused-AdamW step under each scaled-dot-product-attention setting (torch's default choice,
no cuDNN, math only). The first setting that stays finite trains for MINUTES (``ralu.demo.train``, the
the CPU runs' σ band, batch 128, 12 rendering workers, a 40-step probe sizing the cosine schedule) and its 50-step baseline is read back
on 256 held-out captions (OUT/toy, OUT/readback.txt). BATCH, WORKERS and CAPTIONS in the environment override
128, 12 and 256 (a CPU smoke test: BATCH=2 WORKERS=1 CAPTIONS=4 python tools/gpu_debug.py /tmp/gd 0.3 cpu).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ralu.demo.model import load_toy  # noqa: E402
from ralu.demo.train import RenderedBatches, flow_loss  # noqa: E402
from ralu.demo.train import main as train_main  # noqa: E402

SETTINGS = ("default", "no-cudnn", "math")


def use(setting: str) -> None:
    """Set torch's global SDPA backends for ``setting``."""
    cuda = torch.backends.cuda
    cuda.enable_flash_sdp(setting != "math")
    cuda.enable_mem_efficient_sdp(setting != "math")
    cuda.enable_math_sdp(True)
    with contextlib.suppress(AttributeError):
        cuda.enable_cudnn_sdp(setting == "default")


def finite_step(device: str, images, captions, autocast: bool) -> tuple[float, float, bool]:
    """(loss before, loss after one fused AdamW step, parameters finite) on a fresh copy of the shipped toy."""
    model = load_toy(None, device)
    model.transformer.train()
    params = list(model.transformer.parameters()) + list(model.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), fused=device != "cpu")
    losses = []
    for _ in range(2):
        loss = flow_loss(model, images.to(device), captions, torch.Generator().manual_seed(0), 0.1, autocast)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return losses[0], losses[1], all(bool(torch.isfinite(p).all()) for p in params)


def main(argv: list[str]) -> int:
    out, minutes = Path(argv[0]), float(argv[1])
    device = argv[2] if len(argv) > 2 else "cuda"
    print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), flush=True)
    model = load_toy(None, device)
    saved = load_file(str(ROOT / "src/ralu/data/toy/transformer/diffusion_pytorch_model.safetensors"))
    state = model.transformer.state_dict()
    worst = max((state[k].float().cpu() - v.float()).abs().max().item() for k, v in saved.items())
    print(f"loaded vs file: {len(saved)} tensors, largest difference {worst:.3g}; missing from file: "
          f"{sorted(set(state) - set(saved))[:5]}", flush=True)
    images, captions = RenderedBatches(1, 8)[0]
    cpu_loss = flow_loss(load_toy(None, "cpu"), images, captions, torch.Generator().manual_seed(0), 0.1).item()
    print(f"cpu loss {cpu_loss:.5f}", flush=True)
    finite = []  # (setting, autocast) pairs that stay finite, in the order tried
    for setting in SETTINGS:
        use(setting)
        for autocast in (True, False):
            try:
                before, after, ok = finite_step(device, images, captions, autocast)
                print(f"{setting:>9} autocast={autocast!s:5}: loss {before:.5f} → {after:.5f}, params finite {ok}",
                      flush=True)
                if ok and before == before and after == after:
                    finite.append((setting, autocast))
            except Exception as error:  # noqa: BLE001 - a diagnosis: report and try the next setting
                print(f"{setting:>9} autocast={autocast!s:5}: {type(error).__name__}: {error}"[:300], flush=True)
        if any(autocast for _, autocast in finite):
            break
    if not finite or minutes <= 0:
        print("no setting stays finite" if not finite else f"finite: {finite}; no training asked")
        return 0
    chosen, autocast = max(finite, key=lambda pair: pair[1])  # bf16 autocast where it is finite (it is faster)
    dtype = "bf16" if autocast else "fp32"
    use(chosen)
    flags = ["--init", str(ROOT / "src/ralu/data/toy"), "--batch", os.environ.get("BATCH", "128"), "--lr", "0.001", "--device", device,
             "--workers", os.environ.get("WORKERS", "12"), "--dtype", dtype, "--threads", "2", "--checkpoint-every", "0",
             "--sigma-band", "0.4", "0.9", "0.3"]
    train_main([*flags, "--out", "/tmp/probe", "--steps", "40", "--log-every", "10"])
    log = json.loads(Path("/tmp/probe/training.json").read_text())["log"]
    per_step = (log[-1]["seconds"] - log[0]["seconds"]) / (log[-1]["step"] - log[0]["step"])
    steps = max(10, int(0.9 * (minutes * 60 - 20) / per_step))
    print(f"training {minutes} min with SDPA setting {chosen}, {dtype}: {per_step:.3f} s a step, {steps} steps", flush=True)
    train_main([*flags, "--out", str(out / "toy"), "--steps", str(steps), "--max-minutes", str(minutes),
                "--log-every", "200"])
    spec = importlib.util.spec_from_file_location("readback", ROOT / "tools" / "readback.py")
    readback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readback)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = readback.main([str(out / "toy"), os.environ.get("CAPTIONS", "256"), "50", "4", device])
    print(printed.getvalue(), end="")
    (out / "readback.txt").write_text(printed.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
