"""``diffem deblur INPUT...`` (blind deblurring of photos) and ``diffem demo``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from diffem.cli import CLIError

FORMATS = ("png", "tif", "jpg")
DEMO_INPUTS = ("real_cross_stitch.jpg", "synthetic_chelsea_blurred.png")
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"   # package data: src/diffem/examples


def _outputs(stem: str, outdir: str, fmt: str, n_samples: int) -> dict:
    o = {
        "image": os.path.join(outdir, f"{stem}_deblurred.{fmt}"),
        "kernel_png": os.path.join(outdir, f"{stem}_kernel.png"),
        "kernel_npy": os.path.join(outdir, f"{stem}_kernel.npy"),
        "figure": os.path.join(outdir, f"{stem}_figure.png"),
        "report": os.path.join(outdir, f"{stem}_report.json"),
    }
    for i in range(n_samples):
        o[f"sample_{i}"] = os.path.join(outdir, f"{stem}_sample{i}.{fmt}")
    return o


def _figure(path: str, blurry: np.ndarray, restored: np.ndarray, kernel: np.ndarray, title: str) -> None:
    """blurry | restored | kernel, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diffem.files import atomic_write

    H, W = blurry.shape[:2]
    aspect = W / H
    fig = Figure(figsize=(2 * 4 * aspect + 3, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 3, width_ratios=[aspect, aspect, 0.7])
    cmap = "gray" if blurry.shape[2] == 1 else None
    for i, (img, name) in enumerate([(blurry, "blurry input"), (restored, "restored")]):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(np.clip(img[..., 0] if img.shape[2] == 1 else img, 0, 1), cmap=cmap, vmin=0, vmax=1,
                  interpolation="lanczos" if max(H, W) > 1200 else "nearest")
        ax.set_title(name)
        ax.axis("off")
    ax = fig.add_subplot(gs[0, 2])
    ax.imshow(kernel / max(kernel.max(), 1e-12), cmap="magma", interpolation="nearest")
    ax.set_title(f"kernel {kernel.shape[0]}×{kernel.shape[1]}")
    ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _check_outputs_do_not_clobber(outputs: dict, protected: set) -> None:
    for p in outputs.values():
        if os.path.realpath(p) in protected:
            raise ValueError(f"output {p!r} would overwrite an input file (choose another -o folder)")


def _process_one(path: str, args, prior, sigma, protected: set, version: str) -> dict:
    import diffem
    from diffem.files import write_npy, write_text
    from diffem.realphoto import deblur_photo, read_photo, write_photo
    from diffem.realphoto.io import kernel_to_image

    stem = Path(path).stem
    outputs = _outputs(stem, args.output, args.format, args.particles if args.save_samples else 0)
    _check_outputs_do_not_clobber(outputs, protected)
    photo = read_photo(path)
    H, W = photo.pixels.shape[:2]
    compression = photo.compression_sigma if args.jpeg_noise == "auto" else args.jpeg_noise
    t0 = time.perf_counter()
    res = deblur_photo(photo.pixels, sigma=sigma, prior=prior, method=args.method, kernel_size=args.kernel_size,
                       n_particles=args.particles, steps=args.steps, seed=args.seed, device=args.device,
                       progress=not args.quiet, window=args.window, restore=args.restore, boundary=args.boundary,
                       sigma_floor=args.sigma_floor, linear_light=args.linear_light, saturation=args.saturation,
                       bf16={"auto": "auto", "on": True, "off": False}[args.bf16], compression_sigma=compression)
    elapsed = time.perf_counter() - t0
    restored = res.image.permute(1, 2, 0).numpy()
    kernel = res.kernel.numpy().astype(np.float32)
    written = []
    try:
        write_photo(outputs["image"], restored, photo.alpha, photo.bit_depth)
        written.append(outputs["image"])
        write_photo(outputs["kernel_png"], kernel_to_image(kernel))
        written.append(outputs["kernel_png"])
        write_npy(outputs["kernel_npy"], kernel)
        written.append(outputs["kernel_npy"])
        if args.save_samples and res.samples is not None:
            for i in range(res.samples.shape[0]):
                s = res.samples[i]
                s = s.mean(0, keepdim=True) if photo.grayscale and s.shape[0] != 1 else s
                write_photo(outputs[f"sample_{i}"], s.permute(1, 2, 0).numpy(), None, photo.bit_depth)
                written.append(outputs[f"sample_{i}"])
        jpeg = (f" + JPEG {res.info['compression_sigma'] * 255:.2f}/255 → {res.info['sigma_restore'] * 255:.2f}/255"
                if res.info["compression_sigma"] else "")
        title = (f"{Path(path).name}: {args.method}, σ={res.sigma * 255:.2f}/255"
                 f"{' (estimated)' if res.sigma_estimated else ''}{jpeg}, {res.restore}"
                 + ("" if res.info.get("kernel_trusted", True) else " — kernel NOT trusted: output only denoised"))
        _figure(outputs["figure"], photo.pixels, restored, kernel, title)
        written.append(outputs["figure"])
        report = {
            "input": os.path.abspath(path), "size": [W, H], "channels": photo.pixels.shape[2],
            "bit_depth": photo.bit_depth, "alpha": photo.alpha is not None,
            "outputs": {k: os.path.abspath(v) for k, v in outputs.items() if v in written or k == "report"},
            "parameters": {"method": args.method, "kernel_size": args.kernel_size, "particles": args.particles,
                           "steps": res.info.get("steps", args.steps), "prior": str(args.prior),
                           "prior_name": res.info.get("prior"), "seed": args.seed, "device": str(args.device),
                           "window": args.window, "restore": res.restore, "boundary": args.boundary,
                           "linear_light": args.linear_light, "saturation": args.saturation,
                           "sigma_floor": args.sigma_floor, "jpeg_noise": args.jpeg_noise, "bf16": args.bf16,
                           "kernel_prior": res.info.get("kernel_prior")},
            "sigma": res.sigma, "sigma_255": res.sigma * 255, "sigma_estimated": res.sigma_estimated,
            "jpeg_quantization_step": photo.jpeg_step,
            "compression_sigma_255": res.info["compression_sigma"] * 255,
            "sigma_restore_255": res.info["sigma_restore"] * 255,
            "sigma_judge_255": res.info["sigma_judge"] * 255,
            "kernel_window": list(res.window) if res.window else None,
            "kernel_trusted": res.info.get("kernel_trusted"),
            "safeguard": {k: res.info[k] for k in ("residual_ratio_relative", "residual_ratio_held_out", "residual_limit",
                                                   "window_scores", "candidates", "no_blur_gradient_sparsity", "estimator",
                                                   "judged_on", "judge_crops")
                          if k in res.info},
            "output": res.restore, "kernel_size": int(kernel.shape[-1]),
            "kernel_support": res.info.get("kernel_support"), "pnp_bf16_from": res.info.get("pnp_bf16_from"),
            "saturated_fraction": res.info.get("saturated_fraction"),
            "timings": {k: round(float(v), 4) for k, v in res.timings.items()}, "elapsed_s": round(elapsed, 3),
            "diffem_version": version, "torch_version": diffem.api.torch.__version__,
        }
        write_text(outputs["report"], json.dumps(report, indent=2) + "\n")
        written.append(outputs["report"])
    except BaseException:
        for p in written:  # nothing half-written: all outputs of this input or none
            if os.path.exists(p):
                os.remove(p)
        raise
    return {"input": path, "outputs": outputs, "sigma": res.sigma, "estimated": res.sigma_estimated, "time": elapsed,
            "compression_sigma": res.info["compression_sigma"], "sigma_restore": res.info["sigma_restore"],
            "trusted": res.info.get("kernel_trusted", True)}


def _check_prior_name(name: str) -> None:
    from diffem.priors import PRIOR_NAMES

    if name not in PRIOR_NAMES and not os.path.exists(name.removeprefix("diffusers:")):
        raise CLIError(f"--prior: unknown prior {name!r} (names: {', '.join(PRIOR_NAMES)}, a checkpoint path "
                       "or diffusers:FOLDER)")


def _load_prior_or_fail(name: str, dev, preset, fallback: bool):
    from diffem.priors import load_prior

    _check_prior_name(name)
    try:
        return load_prior(name, preset=preset, device=dev), name
    except (ImportError, FileNotFoundError, OSError, KeyError) as e:
        if name == "default" and fallback:
            print(f"diffem: the default prior's weights are not available ({type(e).__name__}: {e}); "
                  "falling back to the Gaussian prior (results will be much softer)", file=sys.stderr)
            return load_prior("gaussian", device=dev), "gaussian"
        if name == "default":
            raise CLIError(f"--prior default: the bundled prior could not be loaded ({e}); "
                           "use --prior gaussian or --prior PATH") from None
        raise CLIError(f"--prior {name!r}: could not be loaded ({e})") from None


def _validate(args):
    """Checks the options with the library's own validators (messages name the option);
    returns (σ: 'auto' or a float, the device)."""
    from diffem.api import BLIND_METHODS
    from diffem.measurement import (check_boundary, check_choice, check_kernel_size, check_positive_int,
                                    check_saturation, parse_sigma, resolve_device)
    from diffem.realphoto.pipeline import RESTORE_MODES, SATURATION, SIGMA_FLOOR

    check_choice(args.method, BLIND_METHODS, "--method")
    check_choice(args.format, FORMATS, "--format")
    if args.kernel_size != "auto":
        try:
            args.kernel_size = int(args.kernel_size)
        except ValueError:
            raise CLIError(f"--kernel-size: expected 'auto' or an integer, got {args.kernel_size!r}") from None
        check_kernel_size(args.kernel_size, name="--kernel-size")
    check_positive_int(args.particles, "--particles")
    if args.window is not None:
        check_positive_int(args.window, "--window")
        if args.kernel_size != "auto" and args.window < 2 * args.kernel_size:
            raise CLIError(f"--window: must be at least twice the kernel size ({2 * args.kernel_size}), got {args.window}")
    args.sigma_floor = (SIGMA_FLOOR if args.sigma_floor is None else
                        parse_sigma(args.sigma_floor, "--sigma-floor", allow_zero=True))
    args.jpeg_noise = parse_sigma(args.jpeg_noise, "--jpeg-noise", allow_auto=True, allow_zero=True)
    if args.steps is not None:
        check_positive_int(args.steps, "--steps")
    check_choice(args.restore, RESTORE_MODES, "--restore")
    check_boundary(args.boundary, "--boundary")
    check_choice(args.bf16, ("auto", "on", "off"), "--bf16")
    args.saturation = SATURATION if args.saturation is None else check_saturation(args.saturation, "--saturation")
    return parse_sigma(args.sigma, "--sigma", allow_auto=True), resolve_device(args.device, "--device")


def _prepare_output(args) -> None:
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise CLIError(f"-o/--output: cannot create output folder {args.output!r} ({e.strerror or e})") from None
    if not os.access(args.output, os.W_OK | os.X_OK):
        raise CLIError(f"-o/--output: output folder {args.output!r} is not writable")
    try:  # os.access is not enough (root, read-only mounts): really try
        import tempfile
        with tempfile.NamedTemporaryFile(dir=args.output, prefix=".diffem-probe-"):
            pass
    except OSError as e:
        raise CLIError(f"-o/--output: output folder {args.output!r} is not writable ({e.strerror or e})") from None


def run_deblur(args, fallback_prior: bool = False) -> int:
    import diffem
    from diffem.realphoto import expand_inputs

    sigma, args.device = _validate(args)
    files, problems = expand_inputs(args.inputs)
    for _, msg in problems:
        print(f"diffem {args.command}: error: {msg}", file=sys.stderr)
    if not files:
        if problems:
            return 2
        raise CLIError("no input image")
    _prepare_output(args)
    if args.method == "multiscale-pnp":    # needs the denoiser, not the diffusion prior
        _check_prior_name(args.prior)
        prior = args.prior
    else:
        prior, args.prior = _load_prior_or_fail(args.prior, args.device, args.preset, fallback_prior)
    protected = {os.path.realpath(f) for f in files}
    failed = len(problems)
    done = []
    for i, path in enumerate(files):
        if not args.quiet:
            print(f"[{i + 1}/{len(files)}] {path}", file=sys.stderr)
        try:
            r = _process_one(path, args, prior, sigma, protected, diffem.__version__)
        except Exception as e:  # noqa: BLE001 - report this input, go on with the others
            failed += 1
            msg = str(e) if path in str(e) else f"{path}: {e}"
            print(f"diffem {args.command}: error: {msg}", file=sys.stderr)
            continue
        done.append(r)
        est = " (estimated)" if r["estimated"] else ""
        if r["compression_sigma"]:
            est += (f", restored at {r['sigma_restore'] * 255:.2f}/255 "
                    f"(JPEG compression {r['compression_sigma'] * 255:.2f}/255)")
        warn = "" if r["trusted"] else ("\n  warning: the estimated kernel does not explain the photo (safeguard); "
                                       "the output is only denoised, not deblurred")
        print(f"{path} -> {r['outputs']['image']}  (kernel {r['outputs']['kernel_npy']}, figure "
              f"{r['outputs']['figure']}; σ = {r['sigma'] * 255:.2f}/255{est}; {r['time']:.1f} s){warn}")
    if failed:
        if failed + len(done) > 1:
            print(f"diffem {args.command}: {failed} input(s) failed, {len(done)} done", file=sys.stderr)
        return 1
    return 0


def _add_common(p: argparse.ArgumentParser, steps_default, window_default: int | None = None) -> None:
    p.add_argument("-o", "--output", default="deblurred", help="output folder (created if missing)")
    p.add_argument("--sigma", default="auto", help="noise std on [0,1]: 'auto' (estimated), 0.02 or 5/255")
    p.add_argument("--kernel-size", default="auto",
                   help="side of the estimated kernel: auto (grows as the blur needs: blurs up to about 75 px, on "
                        "supports up to 105) or an integer ≥ 3")
    p.add_argument("--method", default="multiscale-pnp",
                   help="multiscale-pnp (diffem's default) | the paper's fast-em-pigdm | fast-em-dps | em-pigdm | em-dps")
    p.add_argument("--sigma-floor", default=None,   # None: the pipeline's SIGMA_FLOOR (set in _validate)
                   help="lowest noise level the restoration assumes (quantisation, model error); "
                        "on [0,1] like --sigma (default: 1/255)")
    p.add_argument("--jpeg-noise", default="auto",
                   help="the noise JPEG compression added, which --sigma auto cannot see: the kernels' judge adds "
                        "it to σ in quadrature and reads a colour photo's luminance only; the restoration adds a "
                        "share that grows as its root (0.6·√step/255). auto (from a JPEG file's quantisation table; "
                        "0 for other files), 0 (off) or like --sigma")
    p.add_argument("--particles", type=int, default=1, help="posterior samples (particles)")
    p.add_argument("--steps", type=int, default=steps_default,
                   help="diffusion steps (default: 100 for ΠGDM, 1000 for DPS)")
    p.add_argument("--prior", default="default", help="default | gaussian | PATH to a checkpoint")
    p.add_argument("--preset", default=None, help="architecture preset for a checkpoint PATH")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same output")
    p.add_argument("--window", type=int, default=window_default,
                   help="photos larger than this: estimate the kernel on the most informative WINDOW×WINDOW regions "
                        "(default 1024 for multiscale-pnp, 256 for the diffusion methods)")
    p.add_argument("--restore", default="auto",
                   help="full-photo restoration: auto (= pnp, the best measured) | pnp (PnP-HQS with FFDNet, tiles) | "
                        "wiener (fast) | diffusion (tiles) | sample (a diffusion method's own posterior sample)")
    p.add_argument("--boundary", default="valid",
                   help="valid: the photo is a non-circular blur of a larger, unobserved scene (exact); "
                        "circular: smooth periodic extension + the circular model (the paper's synthetic setting)")
    p.add_argument("--linear-light", action="store_true",
                   help="deblur in linear light: undo the sRGB curve, restore, re-apply it (camera shake blurs light)")
    p.add_argument("--saturation", default=None, metavar="LEVEL",   # None: the pipeline's SATURATION (set in _validate)
                   help="pixels with a channel ≥ LEVEL or ≤ 1 − LEVEL (and their neighbours) count as clipped and "
                        "leave the likelihood; in (0.5, 1] (default: only exactly clipped values count)")
    p.add_argument("--bf16", default="auto",
                   help="FFDNet in bf16 in the PnP restorations' early iterations (auto: where bf16 is faster than fp32 | on | off)")
    p.add_argument("--format", default="png", help="output image format: png | tif | jpg (16-bit input -> 16-bit png/tif)")
    p.add_argument("--save-samples", action="store_true", help="also write every posterior sample")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args) -> int:
    examples = Path(args.examples)
    if not examples.is_dir():
        raise CLIError(f"--examples: folder {str(examples)!r} not found")
    inputs = [str(examples / n) for n in DEMO_INPUTS if (examples / n).is_file()]
    if not inputs:
        raise CLIError(f"no example image in {str(examples)!r}")
    args.inputs = inputs
    t0 = time.perf_counter()
    code = run_deblur(args, fallback_prior=True)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {os.path.abspath(args.output)}/ "
          "(*_figure.png shows blurry | restored | kernel)")
    return code


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: …)' to each option's help, except where the default is None: those options say in
    their help what None stands for (a default resolved in ``_validate`` or by the method)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def register(subparsers) -> None:
    p = subparsers.add_parser("deblur", help="blind deblurring of photos (kernel and σ estimated)",
                              formatter_class=_DefaultsHelp,
                              description="Blind deblurring of photos. For each INPUT writes NAME_deblurred.png, "
                              "NAME_kernel.png/.npy, NAME_figure.png and NAME_report.json to the output folder.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    _add_common(p, None)
    p.set_defaults(func=run_deblur)

    d = subparsers.add_parser("demo", help="deblur the bundled examples (what `make demo` runs)",
                              formatter_class=_DefaultsHelp)
    d.add_argument("--examples", default=str(EXAMPLES_DIR), help="folder of example images")
    _add_common(d, 50)
    d.set_defaults(func=_demo, output="demo-output")
