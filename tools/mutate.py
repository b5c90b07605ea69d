"""A mutation pass: plant one plausible bug at a time in a copy of the checkout and see whether the tests fail.

    python tools/mutate.py [--only NAME ...] [--out docs/mutations.md]

Each mutation replaces one exact snippet of a source file (the run stops if the snippet is missing,
so the list cannot silently rot) and runs the test files most likely to see it. "caught" means at
least one test failed; "survived" means all passed, and the table says why that is acceptable or
what test was added.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    named: bool = False  # one of the five the architecture issue named


MUTATIONS = (
    # the five named in the architecture issue
    Mutation("every stage built with stage 1's shift", "src/ralu/config.py",
             "sigmas = stage_sigmas(self.restarts[k], self.ends[k], self.steps[k], self.shifts[k])",
             "sigmas = stage_sigmas(self.restarts[k], self.ends[k], self.steps[k], self.shifts[0])",
             ("tests/test_config.py",), True),
    Mutation("renoise correlated over token_repeat groups whatever the upsampling", "src/ralu/sampler.py",
             "        return pool_tokens(t, mode)", "        return pool_tokens(t, \"token_repeat\")",
             ("tests/test_sampler.py",), True),
    Mutation("region selection fed the noisy latent instead of the clean estimate", "src/ralu/sampler.py",
             "scores = edge_scores(adapter.decode(denoised, low_grid), low_grid, config.canny_clip_unit)",
             "scores = edge_scores(adapter.decode(x, low_grid), low_grid, config.canny_clip_unit)",
             ("tests/test_sampler.py",), True),
    Mutation("FLUX true CFG extrapolating the wrong way", "src/ralu/adapters/common.py",
             "        return uncond + scale * (cond - uncond)", "        return cond + scale * (uncond - cond)",
             ("tests/families/test_flux.py",), True),
    Mutation("the toy's training target with its sign flipped", "src/ralu/demo/train.py",
             "return F.mse_loss(v.float(), noise - x0)", "return F.mse_loss(v.float(), x0 - noise)",
             ("tests/demo/test_train.py",), True),
    # toy training's data and device
    Mutation("a resumed run's batches restarting from step 0", "src/ralu/demo/train.py",
             "sampler=range(first, steps)", "sampler=range(steps)", ("tests/demo/test_train.py",)),
    Mutation("training batch sizes swapped between even and odd steps", "src/ralu/demo/train.py",
             "size = RESOLUTION if step % 2 == 0 else RESOLUTION // 2",
             "size = RESOLUTION if step % 2 == 1 else RESOLUTION // 2", ("tests/demo/test_train.py",)),
    Mutation("a CUDA device accepted where there is none", "src/ralu/demo/train.py",
             "if device.type == \"cpu\" or (device.type == \"cuda\" and has_cuda",
             "if device.type in (\"cpu\", \"cuda\") or (device.type == \"cuda\" and has_cuda",
             ("tests/demo/test_train.py",)),
    # sampler
    Mutation("Euler step with the wrong sign", "src/ralu/solvers.py",
             "return (x32 + (self.grid[i + 1] - self.grid[i]) * v32).to(x.dtype)",
             "return (x32 + (self.grid[i] - self.grid[i + 1]) * v32).to(x.dtype)", ("tests/test_sampler.py",)),
    # stage solvers
    Mutation("DPM-Solver++ correction with the wrong sign", "src/ralu/solvers.py",
             "out = out - 0.5 * coefficient * ((1.0 / r0) * (d0 - self.history[-1]))",
             "out = out + 0.5 * coefficient * ((1.0 / r0) * (d0 - self.history[-1]))", ("tests/test_solvers.py",)),
    Mutation("UniPC corrector's second coefficient halved", "src/ralu/solvers.py",
             "b1 = (phi / hh - 0.5) * 2.0 / b_h", "b1 = (phi / hh - 0.5) * 1.0 / b_h", ("tests/test_solvers.py",)),
    Mutation("AB2 extrapolating with the step sizes swapped", "src/ralu/solvers.py",
             "out = out + (h * h / (2.0 * h_prev)) * (v - self.history[-1])",
             "out = out + (h_prev * h_prev / (2.0 * h)) * (v - self.history[-1])", ("tests/test_solvers.py",)),
    # statistics and benchmarks
    Mutation("paired KID jackknife dropping the deleted caption's own cross term", "src/ralu/eval/stats.py",
             "- 2 * (cross - kxt.sum(1) - kxt.sum(0) + np.diag(kxt)) / m**2)",
             "- 2 * (cross - kxt.sum(1) - kxt.sum(0)) / m**2)", ("tests/eval/test_stats.py",)),
    Mutation("KID jackknife SE over the first set only", "src/ralu/eval/stats.py",
             "+ (m - 1) / m * ((without_b - without_b.mean()) ** 2).sum())", "+ 0.0)", ("tests/eval/test_stats.py",)),
    Mutation("speed bench speedups from unpaired medians", "src/ralu/bench/speed.py",
             "median, speedup = statistics.median(times[name]), statistics.median(measured)",
             "median = statistics.median(times[name]); speedup = statistics.median(times[\"baseline\"]) / median",
             ("tests/bench/test_speed.py",)),
    Mutation("clean estimate at the next noise level", "src/ralu/sampler.py",
             "denoised = (x.float() - sigmas[i] * v.float()).to(x.dtype)",
             "denoised = (x.float() - sigmas[i + 1] * v.float()).to(x.dtype)", ("tests/test_sampler.py",)),
    Mutation("stage-1 noise always downsampled by nearest", "src/ralu/sampler.py",
             "x = downsample_tokens(noise, grid, config.noise_downsample)",
             "x = downsample_tokens(noise, grid, \"nearest\")", ("tests/test_sampler.py",)),
    Mutation("exact kept-noise scaling applied when off", "src/ralu/sampler.py",
             "kept_scale = math.sqrt(1.0 - 1.0 / ratio**2) if config.exact_kept_noise else 1.0",
             "kept_scale = math.sqrt(1.0 - 1.0 / ratio**2)", ("tests/test_sampler.py",)),
    Mutation("no non-finite tripwire", "src/ralu/sampler.py", "        if bool(bad.any()):",
             "        if False:", ("tests/test_sampler.py",)),
    Mutation("interrupted mixed stage returned without its kept tokens upsampled", "src/ralu/sampler.py",
             "x = _to_full(x, config, layout if stage == 1 else None, low_grid)",
             "x = _to_full(x, config, None, low_grid)", ("tests/test_sampler.py",)),
    # noise and schedule
    Mutation("correlation coefficient with Z instead of Z²", "src/ralu/noise.py",
             "return 1.0 - math.sqrt(1.0 - group_size / noise_ratio**2)",
             "return 1.0 - math.sqrt(1.0 - group_size / noise_ratio / 4)", ("tests/test_noise.py", "tests/test_sampler.py")),
    Mutation("restart progress without the e term", "src/ralu/schedule.py",
             "return (0.0,) + tuple(e / (noise_ratio * (1.0 - e) + e) for e in ends[:-1])",
             "return (0.0,) + tuple(e / (noise_ratio * (1.0 - e) + 1.0) for e in ends[:-1])",
             ("tests/test_schedule.py", "tests/test_config.py")),
    Mutation("renoising alpha = 1 - beta", "src/ralu/schedule.py", "    return 1.0 - beta * end, beta",
             "    return 1.0 - beta, beta", ("tests/test_schedule.py", "tests/test_config.py", "tests/test_sampler.py")),
    # layout
    Mutation("children at whole-cell offsets", "src/ralu/layout.py",
             "offsets = torch.tensor(CHILD_OFFSETS, dtype=torch.float32, device=parents.device) / 2",
             "offsets = torch.tensor(CHILD_OFFSETS, dtype=torch.float32, device=parents.device)",
             ("tests/test_layout.py", "tests/test_sampler.py")),
    Mutation("block-sum noise divided by 4", "src/ralu/layout.py",
             "low = patches.sum(dim=(-2, -1)) / 2", "low = patches.sum(dim=(-2, -1)) / 4",
             ("tests/test_layout.py", "tests/test_sampler.py")),
    Mutation("latent_nearest pooling over the wrong axis", "src/ralu/layout.py",
             "parent_pixels = children.mean(dim=-1).transpose(-1, -2)",
             "parent_pixels = children.mean(dim=2).transpose(-1, -2)", ("tests/test_layout.py",)),
    # regions and config
    Mutation("the lowest edge scores selected", "src/ralu/regions.py",
             "order = torch.argsort(key, dim=1, descending=True, stable=True)",
             "order = torch.argsort(key, dim=1, descending=False, stable=True)",
             ("tests/test_regions.py", "tests/test_sampler.py")),
    Mutation("Canny clipping inverted", "src/ralu/regions.py", "    if not clip_unit:", "    if clip_unit:",
             ("tests/test_regions.py",)),
    Mutation("selected tokens rounded up", "src/ralu/config.py",
             "return min(low_tokens, math.floor(self.up_ratio * low_tokens + 1e-9))",
             "return min(low_tokens, math.ceil(self.up_ratio * low_tokens - 1e-9))",
             ("tests/test_config.py", "tests/test_cost.py")),
    Mutation("auto base shift ignores the reference size", "src/ralu/config.py",
             "                base = self.solved_shift * stock_shift / reference_shift",
             "                base = stock_shift", ("tests/test_config.py", "tests/families/test_schnell.py",
                                                     "tests/test_models.py")),
    Mutation("robust NT-DM returns the reference point", "src/ralu/ntdm.py", "            if value < best_value:",
             "            if False:", ("tests/test_ntdm.py",)),
    # adapters
    Mutation("FLUX timestep not divided by 1000", "src/ralu/adapters/flux.py",
             "timestep = (sigma * TIMESTEP_SCALE).expand(x.shape[0]).to(x.dtype) / TIMESTEP_SCALE",
             "timestep = (sigma * TIMESTEP_SCALE).expand(x.shape[0]).to(x.dtype)", ("tests/families/test_flux.py",)),
    Mutation("FLUX ids as (col, row)", "src/ralu/adapters/flux.py",
             "ids = torch.cat([torch.zeros_like(positions[..., :1]), positions], dim=-1)",
             "ids = torch.cat([torch.zeros_like(positions[..., :1]), positions.flip(-1)], dim=-1)",
             ("tests/families/test_flux.py",)),
    Mutation("per-sample processors not restored after a run", "src/ralu/adapters/common.py",
             "        transformer.set_attn_processor(dict(processors))", "        pass",
             ("tests/families/test_flux.py",)),
    Mutation("SD3 mixed stage on the half-resolution table", "src/ralu/adapters/sd3.py",
             "        scale = 1.0 if tuple(grid) == tuple(full_grid) else 2.0",
             "        scale = 1.0", ("tests/families/test_sd3.py",)),
    Mutation("batched guidance halves swapped", "src/ralu/adapters/common.py",
             "                uncond, cond = out.chunk(2)", "                cond, uncond = out.chunk(2)",
             ("tests/families/test_sd3.py",)),
    Mutation("cache state reset at every step", "src/ralu/adapters/common.py",
             "        if step is not None and step.starts_stage:", "        if step is not None:",
             ("tests/test_caching.py",)),
    Mutation("baseline on a shifted linspace instead of the scheduler's grid", "src/ralu/pipelines/common.py",
             "            if config.resolved:", "            if True:\n                config = config.resolve(3.0)",
             ("tests/families/test_flux.py", "tests/families/test_schnell.py")),
)


def run(mutation: Mutation, workdir: Path) -> tuple[str, float, str]:
    target = workdir / mutation.file
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the snippet must occur exactly once in {mutation.file}")
    target.write_text(text.replace(mutation.old, mutation.new))
    tests = [t for t in mutation.tests if (workdir / t).exists()]
    env = {**os.environ, "PYTHONPATH": str(workdir / "src"), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=workdir, env=env, capture_output=True, text=True)
    target.write_text(text)
    failed = [line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith("FAILED")]
    return ("caught" if done.returncode != 0 else "survived"), time.perf_counter() - start, (failed or [""])[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="substrings of mutation names to run")
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder) / "ralu"
        shutil.copytree(ROOT, workdir, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
        rows = []
        for m in chosen:
            result, seconds, test = run(m, workdir)
            rows.append((m, result, test))
            print(f"{result:<9} {seconds:6.1f} s  {m.name}  {test}", flush=True)
    caught = sum(r == "caught" for _, r, _ in rows)
    lines = ["<!-- generated by `python tools/mutate.py --out docs/mutations.md` -->", "# Mutation pass", "",
             f"{caught} of {len(rows)} planted bugs caught. Each row: one snippet replaced in a copy of the checkout, "
             "then the listed test files run.", "", "| mutation | file | result | first failing test |",
             "| --- | --- | --- | --- |"]
    for m, result, test in rows:
        lines.append(f"| {m.name}{' (named in issue 10)' if m.named else ''} | `{m.file}` | {result} | `{test}` |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
