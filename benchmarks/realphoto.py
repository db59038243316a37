"""Benchmarks for diffem.realphoto (issue 5): σ estimation, boundaries, 12-megapixel photos.

    python benchmarks/realphoto.py noise    [--data DIR] [--kernels DIR] [--limit N]
    python benchmarks/realphoto.py boundary [--data DIR] [--kernels DIR] [--limit N] [--size 256] [--sigma 5]
                                            [--blind N --prior gaussian|default --steps S]
    python benchmarks/realphoto.py large    [--megapixels 12] [--prior gaussian] [--steps S]

Defaults read ../shared/data (CBSD68, Levin09 kernels). Each prints a markdown table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffem.physics import blur, blur_valid
from diffem.realphoto import crop, deblur_photo, deconv_valid, pad_periodic, wiener_deconv
from diffem.realphoto.noise import sigma_mad, sigma_pca

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "test" / "CBSD68"
DEFAULT_KERNELS = HERE.parent.parent / "shared" / "data" / "kernels" / "Levin09" / "npy"


def _images(folder, limit):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))[:limit]
    if not files:
        sys.exit(f"no images in {folder}")
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"))
        yield f.name, torch.tensor(a, dtype=torch.float32).permute(2, 0, 1)[None] / 255


def _kernels(folder):
    files = sorted(Path(folder).glob("*.npy"))
    if not files:
        sys.exit(f"no .npy kernels in {folder}")
    return [torch.tensor(np.load(f), dtype=torch.float32) for f in files]


def _psnr(a, b):
    return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))


def _quantise(y):
    return (y.clamp(0, 1) * 255).round() / 255


def bench_noise(args):
    kernels = _kernels(args.kernels)
    g = torch.Generator().manual_seed(0)
    rows = {}
    for i, (name, x) in enumerate(_images(args.data, args.limit)):
        k = kernels[i % len(kernels)]
        yb = blur_valid(x, k)
        for s in (5, 10, 20):
            y = _quantise(yb + s / 255 * torch.randn(yb.shape, generator=g))  # an 8-bit photo
            for est, fn in (("mad", sigma_mad), ("pca", sigma_pca)):
                t = time.perf_counter()
                e = fn(y) * 255
                rows.setdefault((est, s), []).append((e - s, time.perf_counter() - t))
    print("| estimator | σ (/255) | mean error (/255) | mean abs error (/255) | max abs error (/255) | mean rel. abs error | s/image |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for (est, s), v in sorted(rows.items()):
        err = np.array([a for a, _ in v])
        t = np.mean([b for _, b in v])
        print(f"| {est} | {s} | {err.mean():+.3f} | {np.abs(err).mean():.3f} | {np.abs(err).max():.3f} | "
              f"{np.abs(err).mean() / s * 100:.1f}% | {t:.3f} |")
        out.append(dict(estimator=est, sigma=s, bias=err.mean(), mae=np.abs(err).mean(), max=np.abs(err).max(),
                        n=len(err), seconds=t))
    print(json.dumps({"bench": "noise", "images": len(rows[("mad", 5)]), "rows": out}, default=float))


def bench_boundary(args):
    kernels = _kernels(args.kernels)
    s = args.sigma / 255
    g = torch.Generator().manual_seed(0)
    res = {}
    S = args.size
    for i, (name, x) in enumerate(_images(args.data, args.limit)):
        k = kernels[i % len(kernels)]
        r = k.shape[0] // 2
        H, W = x.shape[-2:]
        S_ = min(S, H - 2 * r, W - 2 * r)
        t0, l0 = (H - S_) // 2, (W - S_) // 2
        truth = x[..., t0:t0 + S_, l0:l0 + S_]
        ext = x[..., t0 - r:t0 + S_ + r, l0 - r:l0 + S_ + r]
        noise = s * torch.randn(truth.shape, generator=g)
        y_circ = blur(truth, k) + noise           # the synthetic circular protocol
        y_valid = blur_valid(ext, k) + noise      # a real photo: no wrap-around, same noise
        res.setdefault("wiener, circular data (reference)", []).append(_psnr(wiener_deconv(y_circ, k, s), truth))
        res.setdefault("wiener, valid data, no padding", []).append(_psnr(wiener_deconv(y_valid, k, s), truth))
        p, box = pad_periodic(y_valid, r + 8)
        res.setdefault("wiener, valid data, periodic padding", []).append(_psnr(crop(wiener_deconv(p, k, s), box), truth))
        res.setdefault("deconv_valid (CG, exact boundary), valid data", []).append(_psnr(deconv_valid(y_valid, k, s), truth))
        if i < args.blind:
            import diffem
            kw = dict(prior=args.prior, steps=args.steps, kernel_size=args.kernel_size, seed=i, device="cpu",
                      progress=False)
            rc = diffem.deblur(y_circ[0], s, **kw)
            res.setdefault(f"blind {args.prior} {args.steps} steps, circular data, diffem.deblur", []).append(
                _psnr(rc.image[None], truth))
            for bd in ("valid", "circular"):
                rv = deblur_photo(y_valid[0], sigma=s, window=max(S_, 64), boundary=bd, **kw)
                res.setdefault(f"blind {args.prior} {args.steps} steps, valid data, deblur_photo boundary={bd}",
                               []).append(_psnr(rv.image[None], truth))
            rn = diffem.deblur(y_valid[0], s, **kw)
            res.setdefault(f"blind {args.prior} {args.steps} steps, valid data, no padding", []).append(
                _psnr(rn.image[None], truth))
            print(name, {k_: round(v[-1], 2) for k_, v in res.items()}, file=sys.stderr)
    print(f"| restoration (σ = {args.sigma}/255, {S}×{S} crops, Levin kernels, true kernel unless blind) | images | mean PSNR (dB) |")
    print("|---|---|---|")
    for key, v in res.items():
        print(f"| {key} | {len(v)} | {np.mean(v):.2f} |")
    print(json.dumps({"bench": "boundary", "sigma255": args.sigma, "size": S,
                      "rows": {k_: [float(np.mean(v)), len(v)] for k_, v in res.items()}}))


def bench_large(args):
    """A 12-MP photo (4000×3000, CBSD68 images tiled and upscaled) blurred with a 'valid' kernel
    (USRNet k09, a motion kernel of the tuning split), σ = 5/255, 8-bit; `diffem deblur`'s defaults."""
    H, W = (3000, 4000) if args.megapixels == 12 else (int((args.megapixels * 1e6 * 0.75) ** 0.5),
                                                         int((args.megapixels * 1e6 / 0.75) ** 0.5))
    from diffem.kernels import load_kernel_set

    k = load_kernel_set("usrnet", 25)[0]   # k09_motion (the loader sorts the four motion kernels first)
    r = k.shape[0] // 2
    imgs = [x for _, x in _images(args.data, 12)]
    tiles = [torch.nn.functional.interpolate(x[..., :320, :320], size=(1000, 1000), mode="bicubic").clamp(0, 1)
             for x in imgs]
    rows = [torch.cat(tiles[j * 4:(j + 1) * 4], dim=-1) for j in range(3)]
    x = torch.cat(rows, dim=-2)[..., : H + 2 * r, : W + 2 * r]
    x = torch.nn.functional.pad(x, (0, max(0, W + 2 * r - x.shape[-1]), 0, max(0, H + 2 * r - x.shape[-2])), mode="replicate")
    y = _quantise(blur_valid(x, k) + 5 / 255 * torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0)))[0]
    truth = x[0, :, r:r + H, r:r + W]
    del x, imgs, tiles, rows
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    res = deblur_photo(y, device="cpu", progress=True, bf16=bf16)   # every default (bf16 auto), as `diffem deblur` runs it
    total, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from realphoto_dev import shifted_psnr   # best integer shift, for input and output alike (the dev set's score)

    hwc = lambda a: a.clamp(0, 1).permute(1, 2, 0).double().numpy()  # noqa: E731
    psnr_in, psnr_out = (shifted_psnr(hwc(a), hwc(truth), 16)[0] for a in (y, res.image))
    print(f"| photo | method | σ est. (/255, true 5) | kernel window | wall s | CPU s | timings (wall s) | peak RSS (MB, before run) | PSNR in / out |")
    print("|---|---|---|---|---|---|---|---|---|")
    tim = ", ".join(f"{k_} {v:.1f}" for k_, v in res.timings.items() if k_.endswith("_s") and not k_.startswith("blind_"))
    print(f"| {W}×{H} ({W * H / 1e6:.1f} MP) | {res.info['method']}, k {res.kernel.shape[0]} (support {res.info['kernel_support']}), trusted {res.info['kernel_trusted']} | {res.sigma * 255:.2f} | {res.window} | "
          f"{total:.1f} | {cpu:.1f} | {tim} | {peak:.0f} ({rss0:.0f}) | {psnr_in:.2f} / {psnr_out:.2f} |")
    print(json.dumps({"bench": "large", "W": W, "H": H, "total_s": total, "cpu_s": cpu, "timings": res.timings, "peak_rss_mb": peak,
                      "rss_before_mb": rss0, "sigma255": res.sigma * 255, "psnr_in": psnr_in,
                      "psnr_out": psnr_out, "kernel_trusted": res.info["kernel_trusted"],
                      "kernel_support": res.info["kernel_support"],
                      "pnp_bf16_from": res.info.get("pnp_bf16_from")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["noise", "boundary", "large"])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--kernels", default=str(DEFAULT_KERNELS))
    ap.add_argument("--limit", type=int, default=68)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=5.0, help="noise std /255 (boundary)")
    ap.add_argument("--blind", type=int, default=0, help="also run the blind pipeline on the first N images")
    ap.add_argument("--prior", default="gaussian")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--kernel-size", type=int, default=33)
    ap.add_argument("--megapixels", type=float, default=12)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="large: deblur_photo's bf16")
    args = ap.parse_args()
    torch.manual_seed(0)
    {"noise": bench_noise, "boundary": bench_boundary, "large": bench_large}[args.which](args)


if __name__ == "__main__":
    main()
