"""Quality of a diffusion prior as a one-step Gaussian denoiser (x̂0 of Eq. 12) vs CBM3D, + samples.

For each test image (centre crop) and σ ∈ {15, 25, 50}/255: y = x + σ n (fixed seed), the prior's
denoiser D(y, σ) = x̂0(√ᾱ_t (2y − 1), t) with t matched to σ (``Prior.denoise``), and CBM3D
(PyPI ``bm3d``, ``bm3d_rgb``) on the very same y. PSNR on [0,1], 8-bit peak. CBM3D results are
cached (they do not depend on the prior) so the prior can be re-evaluated cheaply.

Also writes a figure of unconditional samples (ancestral DDPM on a respaced chain).

    python benchmarks/prior_quality.py --n-images 12 --crop 128 \
        --bm3d-cache runs/prior/bm3d_cache.json --figure-dir docs/figures
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - b) ** 2))
    return 10 * np.log10(1.0 / mse)


def load_crops(folder: str, n: int, crop: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".bmp", ".tif")))
    if not names:
        raise ValueError(f"--data: no images in {folder!r}")
    # evenly spread over the (sorted) set rather than the first n
    pick = [names[i] for i in np.linspace(0, len(names) - 1, min(n, len(names))).round().astype(int)]
    out = []
    for name in pick:
        with Image.open(os.path.join(folder, name)) as im:
            x = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        if crop:
            h, w = x.shape[:2]
            top, left = (h - crop) // 2, (w - crop) // 2
            x = x[top:top + crop, left:left + crop]
        else:  # full image cropped down to a multiple of 32 (fits every prior's size constraint)
            x = x[: x.shape[0] // 32 * 32, : x.shape[1] // 32 * 32]
        out.append((name, x))
    return out


def noisy_version(x: np.ndarray, sigma255: int, seed: int, idx: int) -> np.ndarray:
    rng = np.random.default_rng([seed, idx, sigma255])
    return x + sigma255 / 255.0 * rng.standard_normal(x.shape)


def run_bm3d(images, sigmas, seed, cache_path):
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    try:
        import bm3d
    except ImportError:
        print("bm3d is not installed (pip install bm3d): CBM3D column left empty", file=sys.stderr)
        return {}, None
    from tqdm import tqdm
    results, seconds = {}, []
    jobs = [(i, name, x, s) for i, (name, x) in enumerate(images) for s in sigmas]
    for i, name, x, s in tqdm(jobs, desc="CBM3D", mininterval=5):
        key = f"{name}|{x.shape[0]}x{x.shape[1]}|{s}|{seed}"
        if key not in cache:
            y = noisy_version(x, s, seed, i)
            t0 = time.time()
            d = bm3d.bm3d_rgb(y, s / 255.0)
            seconds.append(time.time() - t0)
            cache[key] = psnr(d, x)
            if cache_path:
                tmp = cache_path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(cache, f, indent=0)
                os.replace(tmp, cache_path)
        results[(i, s)] = cache[key]
    return results, (float(np.median(seconds)) if seconds else None)


@torch.no_grad()
def run_prior(prior, images, sigmas, seed):
    results = {}
    for i, (name, x) in enumerate(images):
        for s in sigmas:
            y = noisy_version(x, s, seed, i)
            yt = torch.from_numpy(y).permute(2, 0, 1)[None].float()
            d = prior.denoise(yt, s / 255.0)[0].permute(1, 2, 0).double().numpy()
            results[(i, s)] = (psnr(d, x), psnr(y, x))
    return results


@torch.no_grad()
def sample(prior, n: int, size: int, steps: int, seed: int) -> torch.Tensor:
    """Unconditional ancestral DDPM samples on a respaced chain, in [0,1]."""
    from tqdm import tqdm

    from diffem.schedule import Schedule
    sched = Schedule(steps=steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    for i in tqdm(range(len(sched) - 1, -1, -1), desc=f"samples {n}x{size}", mininterval=5):
        x0 = prior.x0(x, sched.t(i, n))
        x = sched.ddpm_step(x, x0, i, torch.randn(x.shape, generator=g) if i > 0 else None)
    return ((x.clamp(-1, 1) + 1) / 2)


def save_grid(x: torch.Tensor, path: str, cols: int):
    from PIL import Image
    n, c, h, w = x.shape
    rows = (n + cols - 1) // cols
    pad = 2
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3))
    for k in range(n):
        r, cc = divmod(k, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + cc * (w + pad): pad + cc * (w + pad) + w] = \
            x[k].permute(1, 2, 0).numpy()
    tmp = path + ".tmp.png"
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(tmp)
    os.replace(tmp, path)


def plot_loss(csv_path: str, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = np.genfromtxt(csv_path, delimiter=",", names=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(d["step"], d["loss"], lw=0.5, alpha=0.4, label="batch loss")
    ax.plot(d["step"], d["loss_ema"], lw=1.5, label="running mean")
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 16 of 64x64 crops)")
    ax.set_ylabel("ε-MSE")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/test/CBSD68")
    p.add_argument("--n-images", type=int, default=12)
    p.add_argument("--crop", type=int, default=128, help="centre crop size (0 = full image)")
    p.add_argument("--sigmas", default="15,25,50", help="noise levels on the 0..255 scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", default="default", help="prior name or checkpoint path")
    p.add_argument("--bm3d-cache", default="runs/prior/bm3d_cache.json")
    p.add_argument("--bm3d-only", action="store_true", help="only fill the CBM3D cache")
    p.add_argument("--figure-dir", default=None, help="write prior_samples_64.png / prior_samples_256.png here")
    p.add_argument("--sample-steps-64", type=int, default=100)
    p.add_argument("--sample-steps-256", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--loss-csv", default=None, help="a train-prior loss.csv: plot it to FIGURE_DIR/prior_loss.png")
    args = p.parse_args(argv)

    from diffem.perf import configure_cpu
    configure_cpu(threads=args.threads)
    sigmas = [int(s) for s in args.sigmas.split(",")]
    images = load_crops(args.data, args.n_images, args.crop)
    if args.bm3d_cache:
        os.makedirs(os.path.dirname(os.path.abspath(args.bm3d_cache)), exist_ok=True)
    bm3d_res, bm3d_sec = run_bm3d(images, sigmas, args.seed, args.bm3d_cache)
    if args.bm3d_only:
        return 0

    from diffem.priors import load_prior
    prior = load_prior(args.prior)
    t0 = time.time()
    prior_res = run_prior(prior, images, sigmas, args.seed)
    prior_sec = (time.time() - t0) / (len(images) * len(sigmas))

    size = "x".join(map(str, images[0][1].shape[:2])) if args.crop else "full (cropped to multiples of 8)"
    print(f"\n{len(images)} CBSD68 images ({', '.join(n for n, _ in images)}), crop {size}, seed {args.seed}, "
          f"prior {args.prior} ({getattr(prior, 'info', {}).get('step', '?')} training steps)\n")
    print("| σ (/255) | noisy PSNR | prior x̂0 PSNR | CBM3D PSNR | prior − CBM3D (dB) |")
    print("|---|---|---|---|---|")
    for s in sigmas:
        pr = np.mean([prior_res[(i, s)][0] for i in range(len(images))])
        ny = np.mean([prior_res[(i, s)][1] for i in range(len(images))])
        if bm3d_res:
            bm = np.mean([bm3d_res[(i, s)] for i in range(len(images))])
            print(f"| {s} | {ny:.2f} | {pr:.2f} | {bm:.2f} | {pr - bm:+.2f} |")
        else:
            print(f"| {s} | {ny:.2f} | {pr:.2f} | – | – |")
    print(f"\nprior: {prior_sec:.2f} s per image and σ; CBM3D: "
          f"{'%.1f s' % bm3d_sec if bm3d_sec else 'cached'} per image and σ")

    if args.figure_dir:
        os.makedirs(args.figure_dir, exist_ok=True)
        if args.loss_csv:
            plot_loss(args.loss_csv, os.path.join(args.figure_dir, "prior_loss.png"))
        x = sample(prior, 16, 64, args.sample_steps_64, args.seed)
        save_grid(x, os.path.join(args.figure_dir, "prior_samples_64.png"), cols=8)
        x = sample(prior, 4, 256, args.sample_steps_256, args.seed + 1)
        save_grid(x, os.path.join(args.figure_dir, "prior_samples_256.png"), cols=4)
        print(f"samples: 16 at 64x64 ({args.sample_steps_64} DDPM steps), 4 at 256x256 "
              f"({args.sample_steps_256} DDPM steps) -> {args.figure_dir}/prior_samples_{{64,256}}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
