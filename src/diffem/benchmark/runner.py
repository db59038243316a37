"""``run_benchmark``: degrade a dataset deterministically, run methods, append one JSON line per
(image, σ, method) as soon as it finishes, resume where a killed run stopped, shard across workers.

Output folder layout::

    config.json                       settings that define the degraded set (checked on resume)
    results.jsonl                     one row per (image, σ, method); results.shard-I-of-N.jsonl when sharded
    errors.jsonl                      failures (not counted as done: a rerun retries them)
    data/gt/NAME.png                  ground-truth crops
    data/kernels/NAME.npy|png         the true kernels
    data/inputs/NAME_sS.npy|png       the measurements (float32 .npy, unclipped; .png clipped for viewing)
    outputs/METHOD/NAME_sS.png|_k.npy restored images and estimated kernels
    summary.md, summary.csv, pareto.png   (unsharded runs; sharded runs use ``diffem bench-merge``)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from diffem import __version__
from diffem.benchmark import data as bdata
from diffem.benchmark.methods import get_method
from diffem.benchmark.specs import MethodSpec, parse_methods, parse_shard, parse_sigmas, sigma_tag
from diffem.benchmark.summary import read_jsonl, result_files, row_key, write_summary
from diffem.files import atomic_write, write_npy, write_text
from diffem.measurement import check_boundary, resolve_device
from diffem.rng import derive_seed

# Settings that define the degraded set / the results; a resumed run must use the same.
CONFIG_KEYS = ("dataset", "skip", "crop", "kernels", "seed", "boundary", "prior", "steps")


@dataclass
class BenchConfig:
    dataset: str
    out: str
    methods: list = field(default_factory=lambda: ["fast-em-pigdm"])
    sigmas: list = field(default_factory=lambda: [5.0, 10.0, 20.0])
    kernels: str = "motion:33"
    crop: int | None = 256
    limit: int | None = None
    skip: int = 0                   # images skipped before the first one used (sorted by name)
    steps: int | None = None
    prior: str | None = "default"
    seed: int = 0
    boundary: str = "circular"
    device: str = "auto"
    shard: tuple | str | None = None
    kernel_root: str | None = None
    save_outputs: bool = True
    no_reference: bool = True
    error_ratio: bool = True        # Levin's ER column (two PnP restorations per row with a kernel)
    lpips_weights: str | None = None
    lpips_net: str = "alex"
    lpips_lin: str | None = None
    fid_inception: str | None = None
    progress: bool = True
    summary: bool = True


def shard_from_env(env=None) -> tuple[int, int]:
    """(index, count) from torchrun (RANK/WORLD_SIZE) or a SLURM job array
    (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT); (0, 1) otherwise."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        i, n = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
    else:
        return 0, 1
    if not (0 <= i < n):
        raise ValueError(f"shard: inconsistent environment, index {i} of {n}")
    return i, n


def shard_jobs(jobs: list, index: int, count: int) -> list:
    """Deterministic round-robin partition: job j goes to shard j mod count."""
    return [j for t, j in enumerate(jobs) if t % count == index]


def _save_png(path, img: torch.Tensor, normalise: bool = False):
    a = img.detach().cpu().float()
    if normalise:
        a = a / a.max().clamp_min(1e-12)
    a = (a.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0)
        if a.shape[2] == 1:
            a = a[..., 0]
    atomic_write(path, lambda tmp: Image.fromarray(a).save(tmp, format="PNG"))


def _clean(v):
    """JSON-safe scalar: tensors/np to float, NaN/inf to None."""
    if torch.is_tensor(v):
        v = v.detach().cpu()
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, float):
        return v
    return str(v)


class ResultWriter:
    """Appends rows to one .jsonl file; each line is flushed and fsync'ed before the next job starts."""

    def __init__(self, path: str):
        self.path = path
        if os.path.exists(path):
            self._repair()

    def _repair(self):
        # A run killed mid-write may leave a partial last line: cut the file after its last newline.
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, row: dict):
        line = json.dumps(row, allow_nan=False) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _check_config(out: str, cfg: dict):
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in CONFIG_KEYS if old.get(k) != cfg.get(k)]
        if diff:
            k = diff[0]
            raise ValueError(f"out: {out} holds a benchmark made with other settings ({k}: {old.get(k)!r} there, "
                             f"{cfg.get(k)!r} now); use another --out")
        methods = list(old.get("methods", []))
        for m in cfg["methods"]:
            if m not in methods:
                methods.append(m)
        cfg = {**old, "methods": methods, "sigmas": sorted(set(old.get("sigmas", [])) | set(cfg["sigmas"]))}
    write_text(path, json.dumps(cfg, indent=1))
    return cfg


def _load_done(out: str) -> set:
    done = set()
    for p in result_files(out):
        for r in read_jsonl(p):
            done.add(row_key(r))
    return done


def run_benchmark(config: BenchConfig, on_row=None) -> dict:
    """Run (or resume) a benchmark. ``on_row(row)`` is called after each row is saved.

    Returns {"rows": rows written now, "skipped": jobs already done, "jobs": jobs of this shard,
    "errors": failures, "summary": write_summary's result or None}."""
    cfg = config
    specs: list[MethodSpec] = parse_methods(cfg.methods) if isinstance(cfg.methods, str) else [
        s if isinstance(s, MethodSpec) else parse_methods(s)[0] for s in cfg.methods]
    sigmas = parse_sigmas(cfg.sigmas)
    check_boundary(cfg.boundary)
    if cfg.crop is not None and int(cfg.crop) < 8:
        raise ValueError(f"crop: expected at least 8 pixels, got {cfg.crop}")
    if isinstance(cfg.shard, str):
        shard = parse_shard(cfg.shard)
    elif cfg.shard is None:
        shard = shard_from_env()
    else:
        shard = tuple(cfg.shard)
    for s in specs:  # fail early on unknown names
        get_method(s.name)

    images = bdata.list_images(cfg.dataset, cfg.limit, cfg.skip)
    ksrc = bdata.KernelSource(cfg.kernels, cfg.seed, cfg.kernel_root)
    out = cfg.out
    os.makedirs(out, exist_ok=True)
    for sub in ("data/gt", "data/kernels", "data/inputs"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    cfg_dict = {"dataset": os.path.abspath(cfg.dataset), "skip": cfg.skip or None, "crop": cfg.crop, "kernels": cfg.kernels,
                "seed": int(cfg.seed), "boundary": cfg.boundary, "prior": cfg.prior, "steps": cfg.steps,
                "methods": [s.label for s in specs], "sigmas": sigmas, "diffem_version": __version__}
    _check_config(out, cfg_dict)

    names = [os.path.splitext(os.path.basename(p))[0] for p in images]
    if len(set(names)) != len(names):
        raise ValueError("dataset: two images share a file stem")
    jobs = [(i, s, spec) for i in range(len(images)) for s in sigmas for spec in specs]
    my_jobs = shard_jobs(jobs, *shard)
    done = _load_done(out)
    todo = [j for j in my_jobs if (names[j[0]], float(j[1]), j[2].label) not in done]
    fname = "results.jsonl" if shard[1] == 1 else f"results.shard-{shard[0]}-of-{shard[1]}.jsonl"
    writer = ResultWriter(os.path.join(out, fname))
    errors_path = os.path.join(out, "errors.jsonl")

    device = resolve_device(cfg.device)
    prior_obj = None
    lpips_model = None
    if todo and cfg.lpips_weights:
        from diffem.metrics.lpips import LPIPS

        lpips_model = LPIPS(cfg.lpips_weights, cfg.lpips_net, cfg.lpips_lin)
    elif todo and cfg.progress:
        print("LPIPS skipped: pass --lpips-weights (torchvision AlexNet/VGG state dict) to compute it",
              file=sys.stderr)
    if todo and cfg.progress and not cfg.fid_inception and shard[1] == 1:
        print("FID skipped: pass --fid-inception (clean-fid inception-2015-12-05.pt TorchScript) to compute it",
              file=sys.stderr)

    if todo and cfg.prior is not None:  # loaded once, before any job (its load time is not in time_s)
        from diffem.priors import load_prior

        try:
            prior_obj = load_prior(cfg.prior, device=device)
        except ImportError as e:   # an optional dependency (diffusers) is missing
            raise ValueError(f"prior: {cfg.prior!r} cannot be loaded ({e})") from None
    cache = {}  # image index -> (x_gt_big, kernel)
    references = {}  # (image, σ) -> errors of the true kernel's PnP restoration and of y (for ER, gain)
    seen_warnings = set()
    written, errors = [], []
    from tqdm import tqdm

    bar = tqdm(todo, desc=f"bench {shard[0]}/{shard[1]}" if shard[1] > 1 else "bench", disable=not cfg.progress)
    for i, s255, spec in bar:
        name = names[i]
        if i not in cache:
            x = bdata.load_rgb(images[i])
            k = ksrc.kernel(i)
            extra = k.shape[-1] - 1 if cfg.boundary == "valid" else 0
            if cfg.crop and extra and min(x.shape[-2:]) < cfg.crop + extra:
                raise ValueError(f"crop: {name} is {x.shape[-2]}x{x.shape[-1]}, smaller than crop + kernel size - 1 "
                                 f"= {cfg.crop + extra} needed by --boundary valid")
            x = bdata.center_crop(x, (cfg.crop + extra) if cfg.crop else None, name)
            cache = {i: (x, k)}  # keep one image in memory
            kp = os.path.join(out, "data/kernels", name)
            if not os.path.exists(kp + ".npy"):
                write_npy(kp + ".npy", k.numpy())
                _save_png(kp + ".png", k, normalise=True)
        x, k = cache[i]
        sigma = s255 / 255.0
        seed = derive_seed(cfg.seed, i, round(s255 * 1000))
        y_path = os.path.join(out, "data/inputs", f"{name}_{sigma_tag(s255)}.npy")
        y, gt = bdata.make_measurement(x, k, sigma, seed, cfg.boundary)
        if os.path.exists(y_path):  # reuse the saved measurement: identical inputs across resumes/shards
            y = torch.from_numpy(np.load(y_path))
        else:
            write_npy(y_path, y.numpy())
            _save_png(y_path[:-4] + ".png", y)
        gt_png = os.path.join("data/gt", f"{name}.png")
        if not os.path.exists(os.path.join(out, gt_png)):
            _save_png(os.path.join(out, gt_png), gt)

        opts = dict(spec.options)
        opts.setdefault("steps", cfg.steps)
        opts.setdefault("device", device)
        opts.setdefault("progress", False)
        opts.setdefault("boundary", cfg.boundary)   # the methods model the measurement as it was made
        if prior_obj is not None:
            opts.setdefault("prior", prior_obj)
        bar.set_postfix_str(f"{name} σ={s255:g} {spec.label}")
        fn = get_method(spec.name)
        from diffem.metrics.runtime import measure

        try:
            with warnings.catch_warnings(record=True) as caught, measure(device) as cost:
                warnings.simplefilter("always")
                image, k_hat, extra = fn(y, sigma, k.shape[-1], k, seed, **opts)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # keep going; the item stays "not done" so a rerun retries it
            err = {"image": name, "sigma255": s255, "method": spec.label, "error": f"{type(e).__name__}: {e}",
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            errors.append(err)
            ResultWriter(errors_path).append(err)
            print(f"bench: {spec.label} failed on {name} σ={s255:g}: {err['error']}", file=sys.stderr)
            continue
        row = _evaluate(name, s255, spec, image, k_hat, extra or {}, gt, y, k, sigma, seed, cost,
                        cfg, lpips_model, references)
        msgs = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        if msgs:  # kept in the row; printed once per run instead of once per item
            row["warnings"] = msgs
            for msg in msgs:
                if msg not in seen_warnings:
                    seen_warnings.add(msg)
                    print(f"bench: {spec.label}: {msg}", file=sys.stderr)
        row["gt_png"] = gt_png
        if cfg.save_outputs:
            odir = os.path.join(out, "outputs", spec.slug)
            os.makedirs(odir, exist_ok=True)
            stem = f"{name}_{sigma_tag(s255)}"
            _save_png(os.path.join(odir, stem + ".png"), image.float())
            row["output_png"] = os.path.join("outputs", spec.slug, stem + ".png")
            if k_hat is not None:
                write_npy(os.path.join(odir, stem + "_k.npy"), k_hat.detach().cpu().float().numpy())
        writer.append(row)
        written.append(row)
        if on_row is not None:
            on_row(row)
    bar.close()

    summary = None
    if cfg.summary and shard[1] == 1:
        from diffem.benchmark.summary import compute_fid, load_rows

        rows = load_rows([out])
        fid = compute_fid(rows, [out], cfg.fid_inception) if cfg.fid_inception else None
        summary = write_summary(rows, out, method_order=[s.label for s in specs], fid=fid)
    return {"rows": written, "skipped": len(my_jobs) - len(todo), "jobs": len(my_jobs), "errors": errors,
            "summary": summary, "shard": shard}


def _evaluate(name, s255, spec, image, k_hat, extra, gt, y, k, sigma, seed, cost, cfg, lpips_model,
              references: dict) -> dict:
    from diffem import metrics as M

    img = image.detach().cpu().double()
    if img.dim() == 4:
        img = img[0]
    if img.shape[0] == 1 and gt.shape[0] == 3:
        img = img.expand(3, -1, -1)
    if img.shape != gt.shape:
        raise ValueError(f"method {spec.label}: output shape {tuple(img.shape)} != ground truth {tuple(gt.shape)}")
    img = img.clamp(0, 1)  # metrics on the clipped estimate, as a saved image would be
    gt64 = gt.double()
    row = {"image": name, "sigma255": s255, "sigma": sigma, "method": spec.label, "method_name": spec.name,
           "options": _clean(spec.options), "seed": seed, "boundary": cfg.boundary,
           "psnr": M.psnr(img, gt64).item(), "ssim": M.ssim(img, gt64).item(),
           "psnr_blurry": M.psnr(y.double().clamp(0, 1), gt64).item()}
    row["gain"] = row["psnr"] - row["psnr_blurry"]
    row["worse"] = float(row["gain"] < 0)       # the mean over rows is the share of items worse than their input
    samples = extra.get("samples")
    if samples is not None and samples.dim() == 4 and samples.shape[1:] == img.shape:
        # the posterior samples' mean (one sample: that sample, which the image is not when a sampler's
        # output is the PnP restoration with its kernel)
        row["psnr_sa"] = M.psnr_sample_average(samples.detach().cpu().double().clamp(0, 1), gt64).item()
        row["n_samples"] = int(samples.shape[0])
    else:
        row["psnr_sa"] = row["psnr"]
        row["n_samples"] = 1
    if k_hat is not None:
        kh = k_hat.detach().cpu().double()
        if kh.shape == k.shape:
            row["kernel_mse"] = M.kernel_mse(kh, k).item()
            row["kernel_mse_aligned"] = M.kernel_mse_aligned(kh, k).item()
    if cfg.error_ratio:
        key = (name, s255)
        if key not in references:   # per item: the true kernel's restoration and the input, at their best translation
            references.clear()
            references[key] = M.kernel.restoration_errors(M.kernel.default_restorer(y, k, sigma, cfg.boundary), gt64)
            references[key]["psnr_blurry_up_to_shift"] = M.kernel.psnr_up_to_shift(y.double().clamp(0, 1), gt64)
        ref = references[key]
        # blind deblurring cannot fix the image's position: the gain also up to translation
        row["psnr_up_to_shift"] = M.kernel.psnr_up_to_shift(img, gt64)
        row["gain_up_to_shift"] = row["psnr_up_to_shift"] - ref["psnr_blurry_up_to_shift"]
        row["worse_up_to_shift"] = float(row["gain_up_to_shift"] < 0)
    if k_hat is not None and cfg.error_ratio:   # Levin's ER with the PnP restorer
        errors = M.kernel.restoration_errors(M.kernel.default_restorer(y, k_hat.detach().cpu().float(), sigma,
                                                                       cfg.boundary), gt64)
        # Levin's ER (both restorations at their best translation) and, as before session 15, without it
        row["er"] = errors["mse_up_to_shift"] / max(ref["mse_up_to_shift"], 1e-20)
        row["er_unaligned"] = errors["mse"] / max(ref["mse"], 1e-20)
        row["er_le2"] = float(row["er"] <= 2)
        row["er_le3"] = float(row["er"] <= 3)
    # reblur with the estimated kernel, or the true one for non-blind methods / no estimate
    k_re = k_hat.detach().cpu().double() if k_hat is not None else k.double()
    row["reblur"] = M.reblur_error(img, k_re, y.double(), sigma).item()
    if cfg.no_reference:
        row["blur_strength"] = M.blur_strength(img).item()
        row["sharpness_index"] = M.sharpness_index(img).item()
        row["niqe"] = M.niqe(img).item()
    if lpips_model is not None:
        row["lpips"] = lpips_model(img.float(), gt.float()).item()
    row["time_s"] = cost["time_s"]
    row["cpu_s"] = cost["cpu_s"]
    row["peak_rss_mb"] = cost["peak_rss_mb"]
    row["peak_cuda_mb"] = cost["peak_cuda_mb"]
    if "timings" in extra:
        row["timings"] = extra["timings"]
    info = extra.get("info") or {}
    for key in ("steps", "n_particles", "kernel_prior", "lam", "prior", "kernel_trusted", "residual_ratio",
                "residual_ratio_no_blur"):
        if key in info:
            row[key] = info[key]
    for key, v in extra.items():
        if key not in ("samples", "timings", "info") and key not in row:
            row[key] = v
    row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return _clean(row)


__all__ = ["BenchConfig", "run_benchmark", "shard_from_env", "shard_jobs", "asdict"]
