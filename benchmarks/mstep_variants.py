"""M-step variants with the sharp image known (Figure-4 setting): joint colour solve vs the authors'
per-channel average, and the paper's nβσ² vs the authors' βσ² (n = 1 here, so they coincide;
n = 4 copies of the image with independent noise shows the difference).

    python benchmarks/mstep_variants.py --dataset ../shared/data/test/CBSD68 --images 6 --crop 128

Prints a markdown table of the mean kernel MSE (per pixel) over images × Levin kernels.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffem.api import default_kernel_denoiser
from diffem.kernels import load_kernel_set
from diffem.mstep import estimate_kernel
from diffem.physics import Blur, delta_kernel


def centre_crops(folder: str, count: int, crop: int) -> list[torch.Tensor]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    if not files:
        raise ValueError(f"dataset: no images in {folder}")
    out = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        h, w = a.shape[:2]
        a = a[(h - crop) // 2:(h - crop) // 2 + crop, (w - crop) // 2:(w - crop) // 2 + crop]
        out.append(torch.from_numpy(a).permute(2, 0, 1)[None].contiguous())
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="../shared/data/test/CBSD68")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--sigmas", default="5,10,20")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    images = centre_crops(args.dataset, args.images, args.crop)
    kernels = load_kernel_set("levin", 33)
    den = default_kernel_denoiser(33, "cpu")
    variants = {
        "joint, λ=0": dict(channel_mode="joint", regulariser="none"),
        "average (authors), λ=0": dict(channel_mode="average", regulariser="none"),
        "joint, PnP λ=1": dict(channel_mode="joint", regulariser="pnp", denoiser=den),
        "average (authors), PnP λ=1": dict(channel_mode="average", regulariser="pnp", denoiser=den),
        "joint, n=4, nβσ² (paper)": dict(channel_mode="joint", regulariser="pnp", denoiser=den, n=4),
        "joint, n=4, βσ² (authors)": dict(channel_mode="joint", regulariser="pnp", denoiser=den, n=4, n_weight=False),
    }
    sigmas = [float(s) for s in args.sigmas.split(",")]
    res = {v: {s: [] for s in sigmas} for v in variants}
    g = torch.Generator().manual_seed(args.seed)
    jobs = [(x, k, s) for x in images for k in kernels for s in sigmas]
    for x, k, s in tqdm(jobs, desc="M-step variants"):
        y = Blur(k, s / 255)(x, g)
        for name, v in variants.items():
            v = dict(v)
            n = v.pop("n", 1)
            # n particles: the sharp image with independent extra noise, as n posterior samples would differ
            xs = x.repeat(n, 1, 1, 1)
            if n > 1:
                xs = xs + (s / 255) * torch.randn(xs.shape, generator=g)
            est = estimate_kernel(xs, y, s / 255, delta_kernel(33), **v)
            res[name][s].append(float(((est - k) ** 2).mean()))
    print(f"{len(images)} CBSD68 {args.crop}×{args.crop} centre crops × {len(kernels)} Levin kernels (33×33); "
          "mean kernel MSE per pixel\n")
    print("| variant | " + " | ".join(f"σ={s:g}/255" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for name in variants:
        print(f"| {name} | " + " | ".join(f"{np.mean(res[name][s]):.2e}" for s in sigmas) + " |")


if __name__ == "__main__":
    main()
