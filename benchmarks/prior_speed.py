"""Speed of a prior's guidance step: forward with graph + VJP w.r.t. the input (what DPS / ΠGDM pay
per diffusion step), batch 1, at 256² and 512², fp32 and bf16 autocast + channels_last.

Each setting runs in its own subprocess (fresh allocator and oneDNN caches); one warm-up call is
excluded, then the median of ``--runs`` timed calls is reported together with the CPU share the
process got (CPU-seconds per wall-second; below ~1.8 on 2 threads means something else competed)
and the CPU-seconds per call (robust to competition: on an idle machine wall ≈ CPU / threads).

    python benchmarks/prior_speed.py --sizes 256,512 --threads 2 --runs 5 --fast-em-runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def load(prior_name: str, bf16: bool):
    """The prior in fp32, or with bf16 autocast + channels_last."""
    import torch

    from diffem.priors import load_prior
    kw = {"autocast_bf16": bf16, "channels_last": bf16} if prior_name == "default" else {}
    prior = load_prior(prior_name, **kw)
    if bf16 and prior_name != "default":
        prior.autocast_bf16 = True
        prior.network.to(memory_format=torch.channels_last)
    return prior


def measure(prior_name: str, size: int, bf16: bool, threads: int, runs: int, malloc: bool) -> dict:
    import torch

    from diffem.perf import configure_cpu
    applied = configure_cpu(threads=threads, malloc=malloc)
    prior = load(prior_name, bf16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=g)
    v = torch.randn(1, 3, size, size, generator=g)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500])

    def step():
        xr = x.detach().requires_grad_(True)
        eps = prior.eps(xr, t)
        (grad,) = torch.autograd.grad(eps, xr, grad_outputs=v)
        return grad

    times, shares, cpus = [], [], []
    for k in range(runs + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if k:  # first call: oneDNN primitive creation
            times.append(w)
            shares.append(c / w)
            cpus.append(c)
    times.sort()
    return {"size": size, "bf16_cl": bf16, "threads": threads, "malloc": applied["malloc"],
            "median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1], "runs": runs,
            "cpu_share": sorted(shares)[len(shares) // 2], "cpu_s": sorted(cpus)[len(cpus) // 2]}


def measure_fast_em(prior_name: str, size: int, bf16: bool, threads: int, runs: int, malloc: bool) -> dict:
    """Wall time of whole ``diffem.deblur`` runs: Fast EM ΠGDM, 100 steps, 1 particle, 33×33 kernel,
    on a size×size image (the bundled CBSD68 crop, resized), motion blur, σ = 10/255."""
    import numpy as np
    import torch
    from PIL import Image

    from diffem.perf import configure_cpu
    configure_cpu(threads=threads, malloc=malloc)
    import diffem
    from diffem.kernels import MotionBlurGenerator
    from diffem.physics import Blur

    here = os.path.dirname(os.path.abspath(__file__))
    img = Image.open(os.path.join(here, "..", "tests", "data", "core_cbsd68_crop128.png")).convert("RGB")
    x = torch.from_numpy(np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255)
    x = x.permute(2, 0, 1)[None]
    k = MotionBlurGenerator(33).step(1, seed=0)[0]
    y = Blur(k, 10 / 255)(x, torch.Generator().manual_seed(0))
    prior = load(prior_name, bf16)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        diffem.deblur(y, 10 / 255, prior=prior, method="fast-em-pigdm", steps=100, progress=False)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"size": size, "bf16_cl": bf16, "threads": threads, "fast_em_runs": runs, "median_s": times[len(times) // 2],
            "min_s": times[0], "max_s": times[-1]}


def run_child(spec: dict) -> dict | None:
    """One measurement in a fresh subprocess (own allocator and oneDNN caches); None if it failed."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="default")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--modes", default="fp32,bf16", help="fp32 and/or bf16 (= bf16 autocast + channels_last)")
    p.add_argument("--no-malloc", action="store_true", help="leave glibc malloc settings alone")
    p.add_argument("--bf16-runs", type=int, default=None, help="fewer runs for bf16 where it is emulated (slow)")
    p.add_argument("--fast-em-runs", type=int, default=0,
                   help="also time this many whole 100-step Fast EM ΠGDM runs (n = 1) at the first size")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        fn = measure_fast_em if spec.pop("fast_em", False) else measure
        print(json.dumps(fn(**spec)))
        return 0

    rows = []
    for mode in args.modes.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            runs = args.bf16_runs if (mode == "bf16" and args.bf16_runs) else args.runs
            spec = dict(prior_name=args.prior, size=size, bf16=mode == "bf16", threads=args.threads, runs=runs,
                        malloc=not args.no_malloc)
            row = run_child(spec)
            if row is None:
                return 1
            rows.append(row)

    fast_em = []
    for mode in args.modes.split(",") if args.fast_em_runs else []:
        spec = dict(fast_em=True, prior_name=args.prior, size=int(args.sizes.split(",")[0]), bf16=mode == "bf16",
                    threads=args.threads, runs=args.fast_em_runs, malloc=not args.no_malloc)
        fast_em.append(run_child(spec))
        if fast_em[-1] is None:
            return 1

    from diffem.perf import bf16_supported
    print(f"\nprior {args.prior}, batch 1, fwd+VJP w.r.t. x, {args.threads} threads, "
          f"glibc malloc tuning {'off' if args.no_malloc else 'on'}, native bf16: {bf16_supported()}\n")
    print("| size | mode | median wall s | min–max s | runs | CPU share | median CPU s | 100 steps (s, wall) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = "bf16 + channels_last" if r["bf16_cl"] else "fp32"
        print(f"| {r['size']} | {mode} | {r['median_s']:.3f} | {r['min_s']:.3f}–{r['max_s']:.3f} | {r['runs']} | "
              f"{r['cpu_share']:.2f} | {r['cpu_s']:.3f} | {100 * r['median_s']:.0f} |")
    for r in fast_em:
        print(f"\nWhole Fast EM ΠGDM runs (100 steps, n = 1, {r['size']}², {r['threads']} threads, "
              f"{'bf16 + channels_last' if r['bf16_cl'] else 'fp32'}): median {r['median_s']:.1f} s "
              f"(min {r['min_s']:.1f}, max {r['max_s']:.1f}, {r['fast_em_runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
