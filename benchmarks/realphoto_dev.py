"""The real-photo dev set of issue 13 and its benchmark: `diffem deblur` with every default, Anger ℓ0 beside it.

    python benchmarks/realphoto_dev.py make  --out DIR [--limit N] [--crop PX] [--jpeg QUALITY] [--names A B …]
    python benchmarks/realphoto_dev.py score --data DIR --out RESULTS [--method diffem l0] [--limit N]
    python benchmarks/realphoto_dev.py l0 IN.png -o OUT.png --kernel-size K --sigma S   (one photo, Anger ℓ0)
    python benchmarks/realphoto_dev.py candidates --data DIR --out FILE.jsonl [--limit N]   (where the kernel is lost)

The dev set: 20 of the 25 × 4 (Lai16_uniform sharp photo, Lai16_uniform kernel) pairs. Category c
(0 manmade, 1 natural, 2 people, 3 saturated, 4 text) and kernel j (1..4) use photo number
((c + j − 1) mod 5) + 1, so every category meets every kernel once, every kernel meets every photo
number once, and each category leaves out one photo (manmade_05, natural_01, people_02, saturated_03,
text_04). Each pair: 'valid' true convolution (diffem.physics.blur_valid's model, float64, by FFT), Gaussian noise
σ = 1/255 (numpy default_rng(seed), seed = the pair's index 0..19), clipped to [0, 1], 8-bit PNG, full
size; the blurry photo is smaller than the sharp one by k − 1 and sharp/NAME.png is the matching crop.
``--jpeg Q`` also saves each blurry PNG as blurry/NAME.jpg at Pillow's quality Q (its default 4:2:0 colour
subsampling, as a camera's or the web's JPEGs) and the manifest points there: the photos users have.

Scoring: PSNR after the best integer shift within ±--shift px, the same search for input and output,
on the photo minus a border of shift + 4 px. Default 16: blind methods re-centre the kernel and the Lai
kernels' centroids sit up to 7.1 px off their centre, so outputs move by that much; the blurry input's
own optimum is flat and far (up to 24 px for kernel 4), but ±16 is within 0.12 dB of ±32 on it. Each method runs as a subprocess (honest peak
RSS per photo from wait4); one JSON line per (photo, method) goes to RESULTS/rows.jsonl, so a rerun
skips what is done. RESULTS/summary.md and RESULTS/gains.png are rewritten from all rows.

`candidates` asks where a photo's kernel is lost: the photo pipeline's candidate kernels (step 3 of
``diffem.realphoto.pipeline``, on the whole photo, σ estimated as there) and the true kernel, each scored on
the photo's most informative 384² crop for the largest support as the pipeline scores them (the safeguard's
r/r₀, the restoration's gradient sparsity) and by that restoration's PSNR against the sharp crop (best
shift within ±--shift); the pipeline's choice rule is applied to those scores. One JSON line per photo
(resumable), then a table: choice vs best candidate (the choice's own oracle) vs the true kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CATEGORIES = ("manmade", "natural", "people", "saturated", "text")
COLOURS = dict(zip(CATEGORIES, ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple")))
SIGMA = 1 / 255
BORDER = 4


class UsageError(Exception):
    """A bad path or argument: one line on stderr, exit code 2."""


def pairs() -> list[dict]:
    """The 20 pairs of the dev set, in a fixed order (see the module docstring)."""
    out = []
    for c, cat in enumerate(CATEGORIES):
        for j in range(1, 5):
            n = (c + j - 1) % 5 + 1
            out.append(dict(name=f"{cat}_{n:02d}_k{j}", category=cat, source_photo=f"{cat}_{n:02d}.png",
                            source_kernel=f"kernel_{j:02d}.npy", seed=len(out)))
    return out


def need_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{what}: folder {str(p)!r} not found")
    return p


def read_manifest(path) -> tuple[Path, dict]:
    """(the dev-set folder --data, its manifest.json)."""
    data = need_dir(path, "--data")
    if not (data / "manifest.json").exists():
        raise UsageError(f"--data: {str(data)!r} has no manifest.json (make it with `realphoto_dev.py make`)")
    return data, json.loads((data / "manifest.json").read_text())


def out_dir(path, what: str) -> Path:
    p = Path(path)
    if p.resolve() == SHARED.resolve() or SHARED.resolve() in p.resolve().parents:
        raise UsageError(f"{what}: {str(p)!r} is inside the read-only shared data folder")
    return p


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]; alpha dropped, greyscale replicated."""
    from diffem.realphoto import read_photo

    a = read_photo(str(path)).pixels.astype(np.float64)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def append_row(path, row: dict) -> None:
    """One JSON line, flushed and fsync'ed (a crash loses at most the row being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path) -> dict:
    """The last row of each key (photo, method) of a JSON-lines file."""
    rows = {}
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            if line.strip():
                r = json.loads(line)
                rows[(r["photo"], r["method"])] = r
    return rows


def run_timed(cmd: list[str], log, threads: int) -> dict:
    """Run cmd with `threads` torch threads; wall time, exit code and the child's own peak RSS (wait4)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return dict(rc=p.returncode, wall_s=round(time.perf_counter() - t, 2),
                peak_rss_mb=round(usage.ru_maxrss / 1024, 1), cpu_s=round(usage.ru_utime + usage.ru_stime, 2))


def deblur_cli(photo, outdir, log, threads: int, extra: str = "") -> dict:
    """`diffem deblur PHOTO -o OUTDIR --quiet [extra]` as a subprocess; adds the report's own elapsed_s."""
    cmd = [sys.executable, "-m", "diffem.cli", "deblur", str(photo), "-o", str(outdir), "--quiet", *shlex.split(extra)]
    r = run_timed(cmd, log, threads)
    report = Path(outdir) / f"{Path(photo).stem}_report.json"
    if r["rc"] == 0 and report.exists():
        rep = json.loads(report.read_text())
        r.update(elapsed_s=rep.get("elapsed_s"), sigma_255=rep.get("sigma_255"), kernel_size_used=rep.get("kernel_size"),
                 kernel_trusted=rep.get("kernel_trusted"), written=rep.get("output"))
    return r


def blur_valid_fft(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """diffem.physics.blur_valid ('valid' true convolution, float64) of an (H, W, C) photo, by FFT: the same
    values to rounding, but blur_valid's direct conv2d would need 29 GB (im2col) for a 75² kernel at full size."""
    from scipy.signal import fftconvolve

    return np.stack([fftconvolve(x[..., c], k, mode="valid") for c in range(x.shape[2])], axis=2)


# --- make ------------------------------------------------------------------------------------------
def make(args) -> int:
    from PIL import Image

    from diffem.files import atomic_write, write_npy, write_text
    from diffem.realphoto import write_photo

    sharp_dir, kern_dir = need_dir(args.sharp, "--sharp"), need_dir(args.kernels, "--kernels")
    out = out_dir(args.out, "--out")
    settings = dict(sigma=SIGMA, crop=args.crop, sharp=str(sharp_dir.resolve()), kernels=str(kern_dir.resolve()))
    if args.jpeg is not None:
        if not 1 <= args.jpeg <= 95:
            raise UsageError(f"--jpeg: expected a JPEG quality in 1..95, got {args.jpeg}")
        settings["jpeg"] = args.jpeg
    chosen = pairs()[:args.limit]
    if args.names:
        unknown = sorted(set(args.names) - {p["name"] for p in pairs()})
        if unknown:
            raise UsageError(f"--names: not dev-set pairs: {', '.join(unknown)}")
        chosen = [p for p in chosen if p["name"] in args.names]
    man_path = out / "manifest.json"
    if man_path.exists():
        old = json.loads(man_path.read_text())
        if old["settings"] != settings:
            raise UsageError(f"--out: {str(out)!r} holds a dev set made with other settings ({old['settings']}); "
                             "choose another folder")
    entries = []
    for p in tqdm(chosen, desc="dev set"):
        k = np.load(kern_dir / p["source_kernel"]).astype(np.float64)
        K = k.shape[0]
        files = dict(blurry=out / "blurry" / f"{p['name']}.png", sharp=out / "sharp" / f"{p['name']}.png",
                     kernel_npy=out / "kernels" / f"{p['name']}.npy")
        if not all(f.exists() for f in files.values()):
            x = read_rgb(sharp_dir / p["source_photo"])
            if args.crop:  # dev/test only: the centre (crop + K - 1)² of the sharp photo -> a crop² blurry photo
                n = args.crop + K - 1
                t, l = (x.shape[0] - n) // 2, (x.shape[1] - n) // 2
                x = x[t:t + n, l:l + n]
            y = blur_valid_fft(x, k)
            y = np.clip(y + SIGMA * np.random.default_rng(p["seed"]).standard_normal(y.shape), 0, 1)
            o = K - 1 - K // 2  # the kernel's centre ⌊K/2⌋ maps blurry pixel (i, j) to sharp pixel (i + o, j + o)
            write_photo(str(files["sharp"]), x[o:o + y.shape[0], o:o + y.shape[1]])
            write_npy(files["kernel_npy"], k.astype(np.float32))
            write_photo(str(files["blurry"]), y)  # 8-bit: write_photo rounds to the nearest level
        if args.jpeg is not None:
            jpeg = out / "blurry" / f"{p['name']}.jpg"
            if not jpeg.exists():
                with Image.open(files["blurry"]) as im:
                    atomic_write(jpeg, lambda tmp: im.save(tmp, format="JPEG", quality=args.jpeg))
            files["blurry"] = jpeg
        H, W = read_rgb(files["blurry"]).shape[:2]
        entries.append(dict(p, kernel_size=K, blurry_size=[W, H], **{key: str(f.relative_to(out)) for key, f in files.items()}))
    write_text(man_path, json.dumps(dict(settings=settings, pairs=entries), indent=1) + "\n")
    print(f"{len(entries)} pairs in {out}/ (manifest.json)")
    return 0


# --- score -----------------------------------------------------------------------------------------
def shifted_psnr(img: np.ndarray, ref: np.ndarray, shift: int) -> tuple[float, list[int]]:
    """Best PSNR of img against ref over integer shifts |dy|, |dx| ≤ shift, on ref minus a shift + BORDER border.

    All (2·shift + 1)² squared errors at once: Σ img² over each window (integral image) − 2 img ⋆ ref (FFT) + Σ ref²."""
    from scipy.signal import fftconvolve

    if img.shape != ref.shape:
        raise ValueError(f"image {img.shape} and ground truth {ref.shape} differ in size")
    b, s = shift + BORDER, shift
    H, W = ref.shape[:2]
    r, a = ref[b:H - b, b:W - b], img[b - s:H - b + s, b - s:W - b + s]
    h, w = r.shape[:2]
    cross = sum(fftconvolve(a[..., c], r[::-1, ::-1, c], mode="valid") for c in range(a.shape[2]))
    c2 = np.pad((a ** 2).sum(2), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    energy = c2[h:, w:] - c2[:-h, w:] - c2[h:, :-w] + c2[:-h, :-w]
    mse = (energy - 2 * cross + (r ** 2).sum()) / r.size
    i, j = np.unravel_index(np.argmin(mse), mse.shape)
    return round(float(10 * np.log10(1 / max(mse[i, j], 1e-10))), 3), [int(i) - s, int(j) - s]


def l0_command(args) -> int:
    """Anger ℓ0 on one photo ('valid' boundary), written as an 8-bit PNG."""
    import torch

    from diffem.peers.l0 import deblur_l0
    from diffem.realphoto import write_photo

    torch.set_num_threads(args.threads)
    if not os.path.isfile(args.input):
        raise UsageError(f"input file {args.input!r} does not exist")
    y = torch.from_numpy(read_rgb(args.input)).permute(2, 0, 1)
    x, _ = deblur_l0(y, args.sigma, args.kernel_size, boundary="valid", progress=False)
    write_photo(args.output, x.permute(1, 2, 0).numpy())
    return 0


def run_method(method: str, p: dict, data: Path, res: Path, args) -> tuple[dict, Path]:
    blurry = data / p["blurry"]
    log = res / "logs" / f"{p['name']}.{method}.log"
    if method == "diffem":
        outdir = res / "outputs" / "diffem"
        return deblur_cli(blurry, outdir, log, args.threads, args.cli_args), outdir / f"{p['name']}_deblurred.png"
    out = res / "outputs" / "l0" / f"{p['name']}.png"
    os.makedirs(out.parent, exist_ok=True)
    K = p["kernel_size"] | 1  # the true size, rounded up to odd
    cmd = [sys.executable, __file__, "l0", str(blurry), "-o", str(out), "--kernel-size", str(K),
           "--sigma", repr(SIGMA), "--threads", str(args.threads)]
    return dict(run_timed(cmd, log, args.threads), l0_kernel_size=K), out


def score(args) -> int:
    data, manifest = read_manifest(args.data)
    res = out_dir(args.out, "--out")
    os.makedirs(res, exist_ok=True)
    rows_path = res / "rows.jsonl"
    done = {k for k, r in read_rows(rows_path).items() if r.get("ok")}
    todo = [(p, m) for p in manifest["pairs"][:args.limit] for m in args.method if (p["name"], m) not in done]
    truth = {}
    for p, m in tqdm(todo, desc="score"):
        if p["name"] not in truth:
            gt = read_rgb(data / p["sharp"])
            truth = {p["name"]: (gt, shifted_psnr(read_rgb(data / p["blurry"]), gt, args.shift))}
        gt, (psnr_in, shift_in) = truth[p["name"]]
        run, out = run_method(m, p, data, res, args)
        row = dict(photo=p["name"], category=p["category"], kernel_size=p["kernel_size"], method=m,
                   settings=args.cli_args if m == "diffem" else "", threads=args.threads, shift_search=args.shift,
                   psnr_in=psnr_in, shift_in=shift_in, **run, ok=run["rc"] == 0 and out.exists())
        if row["ok"]:
            row["psnr_out"], row["shift_out"] = shifted_psnr(read_rgb(out), gt, args.shift)
            row["gain"] = round(row["psnr_out"] - psnr_in, 3)
        append_row(rows_path, row)
    rows = read_rows(rows_path)
    write_summary(res, manifest["pairs"], rows)
    print(f"{len(rows)} rows in {rows_path}; summary {res / 'summary.md'}, figure {res / 'gains.png'}")
    return 0


def candidates(args) -> int:
    """Per photo: the pipeline's candidate kernels and the true one, scored blind and against the truth."""
    import torch

    from diffem.blind.pipeline import estimate_kernel_denoised, predenoise
    from diffem.blind.safeguard import check_kernel, no_blur_reference
    from diffem.denoisers import load_denoiser
    from diffem.files import atomic_write
    from diffem.metrics.no_reference import gradient_sparsity
    from diffem.physics import Blur, delta_kernel
    from diffem.realphoto.noise import estimate_sigma, noise_levels
    from diffem.realphoto import read_photo
    from diffem.realphoto.pipeline import (JUDGE_SATURATION, SATURATION, SCORE_SIZE, SIGMA_FLOOR, _choose, _kernel_size,
                                           _unclipped, judge_crops, kernel_candidates, roomy_size)

    data, manifest = read_manifest(args.data)
    out = out_dir(args.out, "--out")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {str(out.parent)!r} does not exist")
    done = {json.loads(line)["name"] for line in open(out)} if out.exists() else set()
    if args.kernels_out:
        need_dir(args.kernels_out, "--kernels-out")
    try:
        extra = [(e, int(n)) for e, n in (c.rsplit(":", 1) for c in args.extra)]
    except ValueError:
        raise UsageError(f"--extra: expected ESTIMATOR:SIZE items, got {args.extra}") from None
    den = load_denoiser("ffdnet")
    to_hwc = lambda img: img[0].permute(1, 2, 0).numpy()   # noqa: E731
    for p in tqdm([p for p in manifest["pairs"][:args.limit] if p["name"] not in done], desc="candidates"):
        y = torch.from_numpy(read_rgb(data / p["blurry"])).permute(2, 0, 1).float()
        gt = read_rgb(data / p["sharp"])
        # as deblur_photo with every CLI default: estimation at σ̂ on the unclipped pixels, the judge at σ_r
        # (a JPEG's compression noise included; then on the luminance) on the pixels within JUDGE_SATURATION
        sigma = float(estimate_sigma(y, method="pca"))
        compression = read_photo(str(data / p["blurry"])).compression_sigma
        (sigma_r, _), luma = noise_levels(sigma, compression, SIGMA_FLOOR), compression > 0
        trusted = _unclipped(y, SATURATION)
        judged = _unclipped(y, JUDGE_SATURATION) & trusted
        ksize, auto = _kernel_size("auto", tuple(y.shape[-2:]))
        roomy = roomy_size(ksize, auto, tuple(y.shape[-2:]))   # the largest support, the scorer's
        v = predenoise(y[None], sigma, den)
        pipeline = kernel_candidates(ksize, auto, roomy)
        kernels = {f"{e}-{n}": estimate_kernel_denoised(v, sigma, n, "valid", trusted, e) for e, n in pipeline + extra}
        pipeline = [f"{e}-{n}" for e, n in pipeline]
        kernels["true"] = torch.from_numpy(np.load(data / p["kernel_npy"])).float()
        if args.kernels_out:   # every kernel of this photo, for analyses that need no re-estimation
            atomic_write(Path(args.kernels_out) / f"{p['name']}.npz", lambda tmp: np.savez(
                tmp, **{n: k.double().numpy() for n, k in kernels.items()}))
        # the pipeline's _Scorer: the same crops (one, or two: judge_crops) and no-blur references for every kernel;
        # ratio and sparsity averaged over them, as the pipeline does, and the PSNR too
        crops = []
        for t, l in judge_crops(y, roomy):
            yc, tc = y[None, :, t:t + SCORE_SIZE, l:l + SCORE_SIZE], judged[t:t + SCORE_SIZE, l:l + SCORE_SIZE]
            no_blur = no_blur_reference(yc, Blur.for_measurement(yc, delta_kernel(roomy), sigma_r, "valid", trusted=tc),
                                        den, luma=luma)
            crops.append((yc, tc, gt[t:t + SCORE_SIZE, l:l + SCORE_SIZE], no_blur))
        row = dict(name=p["name"], kernel_size=p["kernel_size"], sigma_255=sigma * 255, sigma_judge_255=sigma_r * 255,
                   psnr_in=_mean([shifted_psnr(to_hwc(yc), gtc, args.shift)[0] for yc, _, gtc, _ in crops]),
                   crops=len(crops), scores={})
        for label, k in kernels.items():
            verdicts = [(check_kernel(yc, None, Blur.for_measurement(yc, k, sigma_r, "valid", trusted=tc), den,
                                      no_blur=no_blur, luma=luma), gtc) for yc, tc, gtc, no_blur in crops]
            row["scores"][label] = dict(
                ratio=_mean([v["residual_ratio_relative"] for v, _ in verdicts]),
                sparsity=_mean([float(gradient_sparsity(v["restored_image"])) for v, _ in verdicts]),
                psnr=_mean([shifted_psnr(to_hwc(v["restored_image"]), gtc, args.shift)[0] for v, gtc in verdicts]))
        # 'no blur' (the safeguard's fallback: the photo denoised)
        row["scores"]["none"] = dict(ratio=1.0, sparsity=_mean([float(gradient_sparsity(nb[0])) for *_, nb in crops]),
                                     psnr=_mean([shifted_psnr(to_hwc(nb[0]), gtc, args.shift)[0]
                                                 for _, _, gtc, nb in crops]))
        pick = lambda names: names[_choose([(row["scores"][n]["ratio"], row["scores"][n]["sparsity"]) for n in names],  # noqa: E731
                                           rough=tuple(i for i, n in enumerate(names) if n.startswith("spectral")))]
        row["choice"] = pick(pipeline)
        if extra:
            row["choice_with_extra"] = pick([n for n in row["scores"] if n not in ("true", "none")])
        append_row(out, row)
    rows = [json.loads(line) for line in open(out)]
    gain = lambda r, n: r["scores"][n]["psnr"] - r["psnr_in"]   # noqa: E731
    print("| photo | kernel | " + " | ".join(n for n in rows[0]["scores"]) + " | choice |")
    print("|---" * (len(rows[0]["scores"]) + 3) + "|")
    for r in rows:
        print(f"| {r['name']} | {r['kernel_size']} | " + " | ".join(
            f"{gain(r, n):+.2f} ({s['ratio']:.2f}, {s['sparsity']:.3f})" for n, s in r["scores"].items())
            + f" | {r['choice']} |")
    best = [max(gain(r, n) for n in r["scores"] if n not in ("true", "none")) for r in rows]
    if all("choice_with_extra" in r for r in rows):
        print(f"\nwith the extra candidates: choice {_mean([gain(r, r['choice_with_extra']) for r in rows]):+.2f} dB, "
              f"worse than the input {sum(gain(r, r['choice_with_extra']) < 0 for r in rows)} "
              f"(pipeline's choice: {sum(gain(r, r['choice']) < 0 for r in rows)})")
    print(f"\ncrop gain, mean over {len(rows)} photos: choice {_mean([gain(r, r['choice']) for r in rows]):+.2f} dB, "
          f"best candidate {_mean(best):+.2f}, true kernel {_mean([gain(r, 'true') for r in rows]):+.2f}; "
          f"photos where no candidate gains 0.5 dB: {sum(b < 0.5 for b in best)}; "
          f"true kernel's r/r0 above the safeguard's 1.05: {sum(r['scores']['true']['ratio'] > 1.05 for r in rows)}")
    return 0


def _mean(v):
    return float(np.mean(v)) if len(v) else float("nan")


def _fmt(v, spec="+.2f"):
    return format(v, spec) if np.isfinite(v) else "–"


def write_summary(res: Path, pairs_: list[dict], rows: dict) -> None:
    from diffem.files import write_text

    methods = sorted({m for _, m in rows}, key=lambda m: (m != "diffem", m))
    lines = ["| method | photos | failed | mean input (dB) | mean output (dB) | mean gain (dB) | worse than input "
             "| worst gain (dB) | kernel not trusted | mean wall s | max peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for (_, mm), r in rows.items() if mm == m]
        ok = [r for r in rs if r["ok"]]
        g = [r["gain"] for r in ok]
        worse = sum(x < 0 for x in g)
        lines.append(f"| {m} | {len(rs)} | {len(rs) - len(ok)} | {_fmt(_mean([r['psnr_in'] for r in ok]), '.2f')} | "
                     f"{_fmt(_mean([r['psnr_out'] for r in ok]), '.2f')} | {_fmt(_mean(g))} | "
                     f"{worse}/{len(ok)} ({100 * worse / max(len(ok), 1):.0f} %) | {_fmt(min(g, default=np.nan))} | "
                     f"{sum(r.get('kernel_trusted') is False for r in ok) if m == 'diffem' else '–'} | "
                     f"{_mean([r['wall_s'] for r in rs]):.1f} | {max((r['peak_rss_mb'] for r in rs), default=0):.0f} |")
    settings = {r["settings"] for r in rows.values() if r["method"] == "diffem" and r["settings"]}
    if settings:
        lines.append(f"\ndiffem deblur options beyond the defaults: {', '.join(sorted(settings))}")
    searches = sorted({r.get("shift_search") for r in rows.values()}, key=str)
    lines.append(f"\nPSNR after the best integer shift within ±{' / ±'.join(map(str, searches))} px; means are over "
                 "each method's own photos (compare methods on equal photo counts).")
    lines += ["", "Mean gain (dB) per category:", "",
              "| method | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for m in methods:
        cells = [_mean([r["gain"] for (_, mm), r in rows.items() if mm == m and r["ok"] and r["category"] == c])
                 for c in CATEGORIES]
        lines.append(f"| {m} | " + " | ".join(_fmt(v) for v in cells) + " |")
    head = "| photo | kernel | input (dB) | " + " | ".join(f"{m} out (dB) | {m} gain | {m} s | {m} MB" for m in methods) + " |"
    lines += ["", "Per photo (PSNR after the best integer shift):", "", head, "|---" * (3 + 4 * len(methods)) + "|"]
    for p in pairs_:
        got = {m: rows.get((p["name"], m)) for m in methods}
        if not any(got.values()):
            continue
        psnr_in = next(r["psnr_in"] for r in got.values() if r)
        cells = []
        for r in got.values():
            if r is None:
                cells += ["–"] * 4
            else:
                cells += [f"{r['psnr_out']:.2f}" if r["ok"] else f"failed (rc {r['rc']})",
                          f"{r['gain']:+.2f}" if r["ok"] else "–", f"{r['wall_s']:.0f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append(f"| {p['name']} | {p['kernel_size']} | {psnr_in:.2f} | " + " | ".join(cells) + " |")
    write_text(res / "summary.md", "\n".join(lines) + "\n")
    gains_figure(res / "gains.png", pairs_, rows, methods)


def gains_figure(path: Path, pairs_: list[dict], rows: dict, methods: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from diffem.files import atomic_write

    names = [p["name"] for p in pairs_]
    fig = Figure(figsize=(max(6.0, 0.42 * len(names) + 2), 2.4 * len(methods) + 1.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(methods), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, m in zip(axes, methods):
        rs = [rows.get((n, m)) for n in names]
        g = [r["gain"] if r and r["ok"] else np.nan for r in rs]
        bars = ax.bar(range(len(names)), g, width=0.7, color=[COLOURS[p["category"]] for p in pairs_])
        ax.bar_label(bars, labels=[f"{x:+.1f}" if np.isfinite(x) else "" for x in g], fontsize=6, padding=1)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("gain (dB)")
        ok = [x for x in g if np.isfinite(x)]
        ax.set_title(f"{m}: mean {_fmt(_mean(ok))} dB over {len(ok)} photos, {sum(x < 0 for x in ok)} worse than "
                     f"their input", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    axes[-1].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes[-1].set_xlim(-0.6, max(len(names), 6) - 0.4)
    fig.legend(handles=[Patch(color=COLOURS[c], label=c) for c in CATEGORIES], fontsize=7, ncol=5,
               loc="upper center", bbox_to_anchor=(0.5, 0.95), frameon=False)
    fig.suptitle("Lai16-uniform dev set: PSNR gain over the blurry input (best integer shift)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the dev set (blurry/, sharp/, kernels/, manifest.json); skips what exists")
    m.add_argument("--out", required=True, help="output folder (outside shared/)")
    m.add_argument("--sharp", default=str(SHARED / "test" / "Lai16_uniform" / "sharp"), help="Lai16_uniform sharp photos")
    m.add_argument("--kernels", default=str(SHARED / "kernels" / "Lai16_uniform" / "npy"), help="kernel_01..04.npy")
    m.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    m.add_argument("--crop", type=int, default=None,
                   help="for development and tests only: blurry photos of CROP×CROP from the sharp photo's centre")
    m.add_argument("--jpeg", type=int, default=None, metavar="QUALITY",
                   help="the blurry photos as JPEGs of this quality (Pillow's scale; the Lai16 real photos are 75)")
    m.add_argument("--names", nargs="+", default=None, help="only these pairs (e.g. manmade_01_k1 text_02_k3)")
    s = sub.add_parser("score", help="run the methods on the dev set and score them (resumable)")
    s.add_argument("--data", required=True, help="a folder written by `make`")
    s.add_argument("--out", required=True, help="results folder: rows.jsonl, summary.md, gains.png, outputs/, logs/")
    s.add_argument("--method", nargs="+", choices=["diffem", "l0"], default=["diffem", "l0"])
    s.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    s.add_argument("--shift", type=int, default=16, help="PSNR after the best integer shift within ±SHIFT px")
    s.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    s.add_argument("--cli-args", default="", help="extra `diffem deblur` options (default: none, every CLI default); "
                   "use a fresh --out for each setting")
    c = sub.add_parser("candidates", help="the pipeline's candidate kernels and the true one, per photo (resumable)")
    c.add_argument("--data", required=True, help="a folder written by `make`")
    c.add_argument("--out", required=True, help="a JSON-lines file (appended to; photos in it are skipped)")
    c.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    c.add_argument("--shift", type=int, default=16, help="PSNR after the best integer shift within ±SHIFT px")
    c.add_argument("--threads", type=int, default=2, help="torch threads")
    c.add_argument("--extra", nargs="*", default=[], help="more candidates to score beside the pipeline's, e.g. "
                   "l0-nnls:45 multiscale:61 (the choice is reported with and without them)")
    c.add_argument("--kernels-out", default=None, help="also write each photo's kernels to KERNELS_OUT/NAME.npz")
    one = sub.add_parser("l0", help="Anger ℓ0 ('valid' boundary) on one photo")
    one.add_argument("input")
    one.add_argument("-o", "--output", required=True)
    one.add_argument("--kernel-size", type=int, required=True)
    one.add_argument("--sigma", type=float, default=SIGMA, help="noise std on [0, 1]")
    one.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(getattr(args, "threads", 1))
    try:
        return {"make": make, "score": score, "l0": l0_command, "candidates": candidates}[args.command](args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"realphoto_dev.py {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
