"""Per-step cost: bare network forward+VJP, non-blind ΠGDM, Fast EM ΠGDM (n = 1 and 4), same warm process.

    python benchmarks/step_cost.py --prior default --size 256 --steps 10 --repeats 5

Target (issue 2): Fast EM ΠGDM ≤ 1.10× non-blind ΠGDM per step at equal steps and particles.
Prints a markdown table; --out appends it to a file.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import diffem
from diffem.physics import Blur, delta_kernel
from diffem.mstep import KernelMStep
from diffem.samplers import fast_diffusion_em, posterior_sample
from diffem.schedule import Schedule


def _median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="diffusion steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernel-size", type=int, default=33)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (use with --threads 1 on a shared machine)")
    ap.add_argument("--out", default=None, help="append the markdown table to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffem.api import default_kernel_denoiser
    from diffem.measurement import resolve_device
    from diffem.priors import load_prior

    dev = resolve_device(args.device)
    prior = load_prior(args.prior, preset=args.preset, device=dev)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, prior.channels, args.size, args.size, generator=g).to(dev)
    k = delta_kernel(args.kernel_size, device=dev)
    y = Blur(k, 0.02)(x)
    sched = Schedule.for_prior(prior, str(args.steps))
    den = default_kernel_denoiser(args.kernel_size, dev)
    rows = []
    for n in (1, 4):
        t = sched.t(len(sched) // 2, n, device=dev)
        xt = torch.randn(n, *x.shape[1:], generator=g).to(dev)

        def vjp():
            xin = xt.clone().requires_grad_(True)
            out = prior.x0(xin, t)
            torch.autograd.grad(out, xin, grad_outputs=torch.ones_like(out))

        def nonblind():
            posterior_sample(prior, y, Blur(k, 0.02), sched, n=n, seed=1, disable=True)

        mstep = KernelMStep(hqs=dict(regulariser="pnp" if den is not None else "l2", denoiser=den))

        def fast_em():
            fast_diffusion_em(prior, y, Blur(k, 0.02), sched, mstep=mstep, n=n, seed=1, disable=True)

        clock = time.process_time if args.cpu_time else time.perf_counter
        t_vjp = _median_time(vjp, args.repeats, clock)
        t_nb = _median_time(nonblind, args.repeats, clock) / args.steps
        t_em = _median_time(fast_em, args.repeats, clock) / args.steps
        rows.append((n, t_vjp, t_nb, t_em))
    head = (f"prior `{args.prior}`, {args.size}×{args.size}, kernel {args.kernel_size}, device {dev}, "
            f"threads {torch.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} time, median of {args.repeats} runs of {args.steps} steps, "
            f"M-step regulariser {mstep.settings['regulariser']}\n\n"
            "| n | network fwd+VJP (s) | non-blind ΠGDM (s/step) | Fast EM ΠGDM (s/step) | Fast EM / non-blind | non-blind / VJP |\n"
            "|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {n} | {v:.3f} | {nb:.3f} | {em:.3f} | {em / nb:.3f} | {nb / v:.3f} |\n"
                           for n, v, nb, em in rows)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
