"""BlindDPS peer: train its kernel diffusion model, run it on CBSD68 crops, and time Self-Deblur.

    # train the 33×33 kernel prior (CPU, stops after CPU_MIN minutes of compute or WALL_MIN of wall time)
    .venv/bin/python benchmarks/blinddps.py train --out src/diffem/weights/blinddps_kernel_33.safetensors
    # BlindDPS on Levin kernels (zero-padded to 33) × CBSD68 centre crops, σ = 5/255
    .venv/bin/python benchmarks/blinddps.py run --n-images 2 --crop 128 --steps 100 --prior default
    # cost of one Self-Deblur iteration (skip-net + FCN kernel generator), to decide feasibility
    .venv/bin/python benchmarks/blinddps.py selfdeblur-cost --size 256 --kernel-size 33
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def cmd_train(args) -> int:
    from diffem.peers.kernel_diffusion import train_kernel_prior
    torch.set_num_threads(args.threads)
    info = train_kernel_prior(args.out, n_kernels=args.n_kernels, batch=args.batch, max_minutes=args.cpu_min,
                              max_wall_minutes=args.wall_min, max_steps=args.max_steps, progress=False)
    print(json.dumps(info))
    return 0


def cmd_run(args) -> int:
    sys.path.insert(0, HERE)
    from validate_l0 import levin_kernels, load_crop, shifted_psnr

    from diffem.metrics import kernel_mse, kernel_mse_aligned, psnr
    from diffem.peers.blinddps import deblur_blind_dps
    from diffem.peers.kernel_diffusion import load_kernel_prior
    from diffem.physics import blur
    from diffem.priors import load_prior

    torch.set_num_threads(args.threads)
    for path in (args.images, args.kernels):
        if not os.path.isdir(path):
            print(f"error: folder not found: {path}", file=sys.stderr)
            return 2
    prior = load_prior(args.prior) if args.method == "blind-dps" else None
    kp = load_kernel_prior(args.kernel_prior) if args.method == "blind-dps" else None
    names = sorted(f for f in os.listdir(args.images) if f.lower().endswith(".png"))
    names = names[args.first: args.first + args.n_images]
    kernels = levin_kernels(args.kernels)
    knames = [f"levin09_k{i}" for i in args.levin]
    sigma = args.sigma / 255
    rows = []
    for ii, name in enumerate(names, start=args.first):
        kname = knames[ii % len(knames)]
        k = kernels[kname]
        x = load_crop(os.path.join(args.images, name), args.crop)
        g = torch.Generator().manual_seed(100 + ii)
        y = blur(x[None], k)[0] + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
        c0, t0 = time.process_time(), time.perf_counter()
        if args.method == "l0":   # same items, for comparison
            from diffem.peers.l0 import deblur_l0
            x_hat, k_hat = deblur_l0(y.float(), sigma, 33, progress=False)
        else:
            x_hat, k_hat = deblur_blind_dps(y.float(), sigma, prior=prior, kernel_size=33, steps=args.steps,
                                            seed=ii, kernel_prior=kp, reg=args.reg, scale=args.scale,
                                            progress=not args.quiet)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        x_hat, k_hat = x_hat.double(), k_hat.double()
        rows.append(dict(method=args.method, image=name, kernel=kname, steps=args.steps, wall_s=wall, cpu_s=cpu,
                         psnr_blurry=float(psnr(y.clamp(0, 1)[None], x[None])),
                         psnr=float(psnr(x_hat[None], x[None])), psnr_shift=shifted_psnr(x_hat, x),
                         kmse=float(kernel_mse(k_hat, k)), kmse_aligned=float(kernel_mse_aligned(k_hat, k))))
        print(json.dumps(rows[-1]), flush=True)
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            tmp = os.path.join(args.save_dir, f"{args.method}_{name[:-4]}_{kname}_{args.steps}.npz.tmp.npz")
            np.savez(tmp, x_hat=x_hat.numpy(), k_hat=k_hat.numpy(), y=y.numpy())
            os.replace(tmp, tmp[: -len(".tmp.npz")])
    keys = ("psnr_blurry", "psnr", "psnr_shift", "kmse", "kmse_aligned", "wall_s", "cpu_s")
    print("mean " + json.dumps({k: float(np.mean([r[k] for r in rows])) for k in keys}))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
    return 0


def _skip_net(in_ch=8, out_ch=3, ch=128, skip=16, levels=5):
    """Deep Image Prior's 'skip' encoder-decoder as Self-Deblur configures it (5 levels, 128 channels,
    16-channel skips, bilinear upsampling): only to time one iteration."""
    from torch import nn

    def block(cin, cout, k, stride=1):
        return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, padding_mode="reflect"), nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2)]

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.skips, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            c = in_ch
            for _ in range(levels):
                self.skips.append(nn.Sequential(*block(c, skip, 1)))
                self.down.append(nn.Sequential(*block(c, ch, 3, 2), *block(ch, ch, 3)))
                c = ch
            for _ in range(levels):
                self.up.append(nn.Sequential(nn.BatchNorm2d(ch + skip), *block(ch + skip, ch, 3), *block(ch, ch, 1)))
            self.out = nn.Conv2d(ch, out_ch, 1)

        def forward(self, x):
            skips = []
            for s, d in zip(self.skips, self.down):
                skips.append(s(x))
                x = d(x)
            for u, s in zip(self.up, reversed(skips)):
                x = nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
                x = u(torch.cat([x, s], 1))
            return torch.sigmoid(self.out(x))

    return Skip()


def cmd_selfdeblur_cost(args) -> int:
    from torch import nn
    torch.set_num_threads(args.threads)
    n = args.size + args.kernel_size - 1
    gx = _skip_net()
    gk = nn.Sequential(nn.Linear(200, 1000), nn.ReLU6(), nn.Linear(1000, args.kernel_size ** 2), nn.Softmax(-1))
    opt = torch.optim.Adam(list(gx.parameters()) + list(gk.parameters()), lr=1e-2)
    zx = torch.rand(1, 8, n, n)
    zk = torch.rand(1, 200)
    y = torch.rand(1, 3, args.size, args.size)
    times = []
    for it in range(args.iters + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        x = gx(zx)
        k = gk(zk).view(1, 1, args.kernel_size, args.kernel_size)
        out = nn.functional.conv2d(x.transpose(0, 1), k).transpose(0, 1)   # 'valid' conv, as Self-Deblur
        loss = ((out - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it:   # the first iteration includes one-off allocations
            times.append((time.process_time() - c0, time.perf_counter() - t0))
    cpu = float(np.median([t[0] for t in times]))
    wall = float(np.median([t[1] for t in times]))
    params = sum(p.numel() for p in gx.parameters()) + sum(p.numel() for p in gk.parameters())
    print(json.dumps({"size": args.size, "kernel_size": args.kernel_size, "params": params,
                      "cpu_s_per_iter": cpu, "wall_s_per_iter": wall, "threads": args.threads,
                      "iterations_needed": 5000, "est_cpu_min_5000": cpu * 5000 / 60,
                      "est_wall_min_5000_idle_2core": cpu * 5000 / 60 / min(args.threads, 1.8)}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--n-kernels", type=int, default=4000)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--cpu-min", type=float, default=25.0)
    t.add_argument("--wall-min", type=float, default=None)
    t.add_argument("--max-steps", type=int, default=100000)
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("run")
    r.add_argument("--images", default=os.path.join(SHARED, "test", "CBSD68"))
    r.add_argument("--kernels", default=os.path.join(SHARED, "kernels", "Levin09", "npy"))
    r.add_argument("--levin", type=int, nargs="+", default=[1, 3, 5, 7], help="Levin kernels, cycled over images")
    r.add_argument("--n-images", type=int, default=2)
    r.add_argument("--first", type=int, default=0, help="index of the first image (sorted names)")
    r.add_argument("--crop", type=int, default=128)
    r.add_argument("--sigma", type=float, default=5.0, help="noise std on the 0-255 scale")
    r.add_argument("--steps", default="1000")
    r.add_argument("--prior", default="default")
    r.add_argument("--kernel-prior", default=None)
    r.add_argument("--reg", type=float, default=1.0)
    r.add_argument("--scale", type=float, default=1.0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--method", choices=["blind-dps", "l0"], default="blind-dps")
    r.add_argument("--out", default=None)
    r.add_argument("--save-dir", default=None)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("selfdeblur-cost")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--kernel-size", type=int, default=33)
    s.add_argument("--iters", type=int, default=3)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_selfdeblur_cost)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
