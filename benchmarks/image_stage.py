"""The image stage (issue 11): denoiser quality and PnP-HQS speed.

    python benchmarks/image_stage.py denoise [--data DIR] [--limit 6]   # FFDNet vs the default prior's x̂0
    python benchmarks/image_stage.py speed [--sizes 256,512,1024]        # PnP-HQS time and peak memory
    python benchmarks/image_stage.py first-cg --dev runs/realphoto_dev [--names a,b] [--cg 8,64]
    python benchmarks/image_stage.py bf16 --dev runs/realphoto_dev [--names a,b] [--bf16-from fp32,0,10]

``denoise``: centre 256² crops of the first CBSD68 images, Gaussian noise σ ∈ {15, 25, 50}/255
(seed 0), PSNR of each denoiser's output. ``speed``: ``diffem.restore(method="pnp")`` on random
images with a 33×33 kernel, circular and valid, each size in a fresh subprocess (so that its peak
RSS is its own), median of 3 runs after one warm-up; 2 torch threads unless ``--threads``.
``first-cg``: PnP-HQS with the *true* kernel on the most informative 384² crop of photo dev-set pairs
(``benchmarks/realphoto_dev.py make``; 'valid', saturated pixels untrusted, σ estimated as the CLI does),
for several CG iteration counts of the first data step (``bf16``: FFDNet in bf16 autocast from a σ_k on);
PSNR after the best shift within ±16 px, and the time of each restoration.
Prints markdown tables and one JSON line each.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "test" / "CBSD68"


def _psnr(a, b):
    return -10 * math.log10(float(((a.clamp(0, 1) - b) ** 2).mean()))


def denoise(args):
    from diffem.benchmark.data import center_crop, list_images, load_rgb
    from diffem.denoisers import load_denoiser

    dens = {name: load_denoiser(name) for name in ("ffdnet", "prior")}
    images = [center_crop(load_rgb(p), 256)[None] for p in list_images(str(args.data), args.limit)]
    g = torch.Generator().manual_seed(0)
    table = {}
    for s255 in (15, 25, 50):
        noisy = [x + s255 / 255 * torch.randn(x.shape, generator=g) for x in images]
        with torch.no_grad():
            for name, den in dens.items():
                table[(name, s255)] = statistics.mean(_psnr(den(y, s255 / 255), x) for x, y in zip(images, noisy))
    print(f"| denoiser | σ 15 | σ 25 | σ 50 |  ({len(images)} CBSD68 crops, 256²)\n|---|---|---|---|")
    for name in dens:
        print(f"| {name} | " + " | ".join(f"{table[(name, s)]:.2f}" for s in (15, 25, 50)) + " |")
    print(json.dumps({"bench": "denoise", **{f"{n}_{s}": v for (n, s), v in table.items()}}))


def _one_size(size: int, boundary: str, threads: int) -> dict:
    import diffem
    from diffem.kernels import load_kernel_set

    torch.set_num_threads(threads)
    k = load_kernel_set("usrnet", 33)[0]
    y = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(4):   # one warm-up, then three
        t = time.perf_counter()
        diffem.restore(y, k, 10 / 255, boundary=boundary, progress=False)
        times.append(time.perf_counter() - t)
    return {"size": size, "boundary": boundary, "median_s": statistics.median(times[1:]), "threads": threads,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def speed(args):
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for boundary in ("circular", "valid"):
            out = subprocess.run([sys.executable, __file__, "_one", str(size), boundary, str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| size | boundary | median s ({args.threads} threads) | peak RSS (MB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['boundary']} | {r['median_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print(json.dumps({"bench": "pnp_speed", "rows": rows}))


def _dev_crops(args):
    """(pair, y crop, sharp crop, physics with the *true* kernel) for the photo dev-set pairs: the most
    informative SCORE_SIZE² crop, 'valid', saturated pixels untrusted, σ estimated as the CLI does."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from realphoto_dev import read_manifest, read_rgb

    from diffem.physics import Blur
    from diffem.realphoto.noise import estimate_sigma
    from diffem.realphoto.pipeline import SCORE_SIZE, SIGMA_FLOOR
    from diffem.realphoto.tiling import informative_windows, saturated

    data, manifest = read_manifest(args.dev)
    names = args.names.split(",") if args.names else None
    for p in manifest["pairs"]:
        if names is not None and p["name"] not in names:
            continue
        y = torch.from_numpy(read_rgb(data / p["blurry"])).permute(2, 0, 1).float()
        gt = read_rgb(data / p["sharp"])
        k = torch.from_numpy(np.load(data / p["kernel_npy"])).float()
        sigma = max(float(estimate_sigma(y, method="pca")), SIGMA_FLOOR)
        trusted = ~saturated(y, 3, 0.98)
        (t, l), = informative_windows(y, SCORE_SIZE, k.shape[-1], 1)
        box = (slice(t, t + SCORE_SIZE), slice(l, l + SCORE_SIZE))
        yc = y[None][..., box[0], box[1]]
        yield p, yc, gt[box[0], box[1]], Blur.for_measurement(yc, k, sigma, "valid", trusted=trusted[box])


def _variant_table(args, labels, restore):
    """PSNR (best shift within ±16 px) of ``restore(label, y, physics)`` per dev crop and label."""
    sys.path.insert(0, str(HERE))
    from realphoto_dev import shifted_psnr

    torch.set_num_threads(args.threads)
    to_hwc = lambda img: img[0].permute(1, 2, 0).numpy()   # noqa: E731
    print("| photo | kernel | input | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 3) + "|")
    rows = []
    for p, yc, gtc, physics in _dev_crops(args):
        row = dict(photo=p["name"], kernel_size=p["kernel_size"], psnr_in=shifted_psnr(to_hwc(yc), gtc, 16)[0])
        for label in labels:
            t = time.perf_counter()
            x = physics.crop(restore(label, yc, physics)).clamp(0, 1)
            row[label], row[label + "_s"] = shifted_psnr(to_hwc(x), gtc, 16)[0], time.perf_counter() - t
        rows.append(row)
        print(f"| {p['name']} | {p['kernel_size']} | {row['psnr_in']:.2f} | "
              + " | ".join(f"{row[label]:.2f}" for label in labels) + " |", flush=True)
        print(json.dumps(row), file=sys.stderr)
    if rows:
        base = labels[0]
        for label in labels[1:]:
            d = [r[label] - r[base] for r in rows]
            print(f"{label} − {base}: mean {statistics.mean(d):+.3f} dB, min {min(d):+.3f}, max {max(d):+.3f}; "
                  f"median time {statistics.median(r[label + '_s'] for r in rows):.2f} s "
                  f"(vs {statistics.median(r[base + '_s'] for r in rows):.2f})")


def first_cg(args):
    from diffem.denoisers import load_denoiser
    from diffem.pnp import pnp_hqs

    den = load_denoiser("ffdnet")
    counts = {f"first step {n} CG": int(n) for n in args.cg.split(",")}
    _variant_table(args, list(counts), lambda label, y, physics: pnp_hqs(y, physics, den, first_cg_iters=counts[label]))


def bf16(args):
    from diffem.denoisers import FFDNetDenoiser
    from diffem.denoisers.ffdnet import load_ffdnet
    from diffem.pnp import pnp_hqs

    net = load_ffdnet()
    dens = {s if s == "fp32" else f"bf16 from {s}/255": FFDNetDenoiser(net, None if s == "fp32" else float(s) / 255)
            for s in args.bf16_from.split(",")}
    _variant_table(args, list(dens), lambda label, y, physics: pnp_hqs(y, physics, dens[label]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        print(json.dumps(_one_size(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["denoise", "speed", "first-cg", "bf16"])
    ap.add_argument("--dev", default="runs/realphoto_dev", help="first-cg, bf16: a photo dev set (realphoto_dev.py make)")
    ap.add_argument("--names", default=None, help="first-cg, bf16: comma-separated pair names (default: all)")
    ap.add_argument("--cg", default="8,64", help="first-cg: CG iteration counts of the first data step")
    ap.add_argument("--bf16-from", default="fp32,0,10",
                    help="bf16: FFDNet in fp32, or in bf16 autocast at σ_k ≥ S/255 (comma-separated; the first is the reference)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"image_stage: --data {args.data!r} is not a folder")
    {"denoise": denoise, "speed": speed, "first-cg": first_cg, "bf16": bf16}[args.which](args)


if __name__ == "__main__":
    main()
