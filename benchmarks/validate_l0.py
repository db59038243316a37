"""Validate diffem's Anger-l0 re-implementation on Levin-kernel synthetic data.

Protocol: CBSD68 images, centre crop (default 256), the 8 Levin et al. 2009 kernels zero-padded to 33×33,
circular blur + Gaussian noise σ ∈ {5, 10}/255 (diffem's benchmark convention), seed per item.
Reports per (σ, kernel): kernel MSE (per pixel, raw and best-integer-shift aligned), PSNR of the blurry
input, of l0's output, and of l0's output after the best integer circular shift within ±8 px (blind
deblurring fixes the kernel only up to a translation), the same for a delta kernel, and run time.

    .venv/bin/python benchmarks/validate_l0.py --n-images 4 --sigmas 5 10 --out results/validate_l0.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from diffem.metrics import kernel_mse, kernel_mse_aligned, psnr
from diffem.peers.l0 import deblur_l0
from diffem.physics import blur, delta_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def load_crop(path: str, crop: int) -> torch.Tensor:
    im = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    H, W = im.shape[:2]
    r, c = (H - crop) // 2, (W - crop) // 2
    return torch.from_numpy(im[r:r + crop, c:c + crop].transpose(2, 0, 1).copy())


def levin_kernels(folder: str, size: int = 33) -> dict:
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".npy"):
            continue
        k = np.load(os.path.join(folder, name)).astype(np.float64)
        n = k.shape[0]
        K = np.zeros((size, size))
        p = (size - n) // 2
        K[p:p + n, p:p + n] = k
        out[name[:-4]] = torch.from_numpy(K / K.sum())
    return out


def shifted_psnr(x_hat: torch.Tensor, x: torch.Tensor, max_shift: int = 8) -> float:
    return max(float(psnr(torch.roll(x_hat, (i, j), (-2, -1))[None], x[None]))
               for i in range(-max_shift, max_shift + 1) for j in range(-max_shift, max_shift + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=os.path.join(SHARED, "test", "CBSD68"))
    ap.add_argument("--kernels", default=os.path.join(SHARED, "kernels", "Levin09", "npy"))
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[5.0, 10.0], help="noise std on the 0-255 scale")
    ap.add_argument("--high-noise", action="store_true", help="use the ISPA 2019 high-noise settings")
    ap.add_argument("--out", default=None, help="JSON file for per-item results")
    args = ap.parse_args(argv)
    for path in (args.images, args.kernels):
        if not os.path.isdir(path):
            print(f"error: folder not found: {path}", file=sys.stderr)
            return 2
    names = sorted(f for f in os.listdir(args.images) if f.lower().endswith(".png"))[: args.n_images]
    kernels = levin_kernels(args.kernels)
    rows = []
    for s255 in args.sigmas:
        sigma = s255 / 255
        for kname, k in kernels.items():
            for ii, name in enumerate(names):
                x = load_crop(os.path.join(args.images, name), args.crop)
                g = torch.Generator().manual_seed(1000 * int(s255) + 10 * ii + int(kname[-1]))
                y = blur(x[None], k)[0] + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
                t0 = time.perf_counter()
                x_hat, k_hat = deblur_l0(y.float(), sigma, 33, progress=False, high_noise=args.high_noise)
                dt = time.perf_counter() - t0
                x_hat, k_hat = x_hat.double(), k_hat.double()
                d = delta_kernel(33, torch.float64)
                rows.append(dict(
                    sigma255=s255, kernel=kname, image=name, run_s=dt,
                    kmse=float(kernel_mse(k_hat, k)), kmse_aligned=float(kernel_mse_aligned(k_hat, k)),
                    kmse_delta=float(kernel_mse(d, k)),
                    psnr_blurry=float(psnr(y.clamp(0, 1)[None], x[None])),
                    psnr=float(psnr(x_hat[None], x[None])), psnr_shift=shifted_psnr(x_hat, x)))
                r = rows[-1]
                print(f"σ={s255:g} {kname} {name}: kmse {r['kmse']:.2e} (aligned {r['kmse_aligned']:.2e}, "
                      f"delta {r['kmse_delta']:.2e})  PSNR blurry {r['psnr_blurry']:.2f} l0 {r['psnr']:.2f} "
                      f"shift-aligned {r['psnr_shift']:.2f}  {dt:.1f}s", flush=True)
    print("\n| σ (/255) | kernel | kernel MSE ×1e4 (aligned) | delta ×1e4 | PSNR blurry | PSNR l0 | PSNR l0 shift-aligned |")
    print("|---|---|---|---|---|---|---|")
    for s255 in args.sigmas:
        for kname in list(kernels) + ["mean"]:
            sel = [r for r in rows if r["sigma255"] == s255 and (kname == "mean" or r["kernel"] == kname)]
            m = {key: float(np.mean([r[key] for r in sel])) for key in
                 ("kmse", "kmse_aligned", "kmse_delta", "psnr_blurry", "psnr", "psnr_shift")}
            print(f"| {s255:g} | {kname} | {1e4 * m['kmse']:.2f} ({1e4 * m['kmse_aligned']:.2f}) | "
                  f"{1e4 * m['kmse_delta']:.2f} | {m['psnr_blurry']:.2f} | {m['psnr']:.2f} | {m['psnr_shift']:.2f} |")
    print(f"\nmean run time {np.mean([r['run_s'] for r in rows]):.2f} s per {args.crop}² image")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
