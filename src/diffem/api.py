"""The top-level API: ``deblur`` (blind), ``restore`` (non-blind), ``Result``.

Every argument is checked once, here, by ``diffem.measurement``; the measurement's physics
(``Blur.for_measurement``) owns the boundary; the samplers return their kernel.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields

import torch

from diffem.measurement import (as_image, as_measurement, check_boundary, check_choice, check_kernel, check_kernel_size,
                                check_positive_int, parse_sigma, resolve_device)
from diffem.mstep import HQS_DEFAULTS, REGULARISERS, KernelMStep
from diffem.physics import Blur, delta_kernel
from diffem.priors import load_prior
from diffem.samplers import diffusion_em, fast_diffusion_em, posterior_sample
from diffem.schedule import Schedule

# multiscale-pnp: diffem's default (diffem.blind): coarse-to-fine ℓ0/NNLS kernel + PnP-HQS image + safeguard.
# The others are the paper's: Fast Diffusion EM (Alg. 2) and Diffusion EM (Alg. A.1) with ΠGDM or DPS.
BLIND_METHODS = ("multiscale-pnp", "fast-em-pigdm", "fast-em-dps", "em-pigdm", "em-dps")
NONBLIND_METHODS = ("pnp", "pigdm", "dps")      # pnp: PnP-HQS around a denoiser (diffem.pnp), the default
SAMPLER_OPTIONS = ("dps_scale",)
# The M-step's λ with diffem's shipped 33×33 kernel denoiser, chosen on the tuning splits: λ belongs to the
# denoiser's weights (the authors re-tuned it for their 64×64 one), and with ours their λ = 1 let Fast EM's
# kernel grow to fill the support (docs/benchmarks/kernel-estimation.md). Other sizes keep the authors' values.
PNP_LAM_33 = 0.03
# M-step options that deblur() takes as **options (lam and kernel_prior have their own arguments)
MSTEP_OPTIONS = tuple(f.name for f in fields(KernelMStep) if f.name != "hqs") + tuple(
    k for k in HQS_DEFAULTS if k not in ("lam", "regulariser"))


@dataclass
class Result:
    """``image``: the result (multiscale-pnp and pnp: the PnP restoration; the paper's samplers: the PnP
    restoration with their kernel, or with ``output="sample"`` the first posterior sample, the paper's
    convention); ``samples``: all images drawn (n, C, H, W); ``mean``: their mean ("PSNR SA")."""

    image: torch.Tensor                 # (C, H, W) on [0, 1]
    kernel: torch.Tensor                # (k, k), ≥ 0, sum 1
    samples: torch.Tensor               # (n, C, H, W)
    timings: dict = field(default_factory=dict)
    kernels: list | None = None         # per-step kernels when record_kernels=True
    info: dict = field(default_factory=dict)

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(0)


def default_kernel_denoiser(kernel_size: int, device):
    """The shipped PnP kernel denoiser for this size, or None when none is shipped for it."""
    from diffem.kernels.denoiser import SHIPPED_SIZES, load_kernel_denoiser

    return load_kernel_denoiser(kernel_size, device=device) if kernel_size in SHIPPED_SIZES else None


def _mstep_for(kernel_size: int, device, kernel_prior: str, lam: float | None, options: dict) -> KernelMStep:
    """The M-step of ``deblur``; takes its options out of ``options``."""
    kernel_prior = check_choice(kernel_prior, ("auto",) + REGULARISERS, "kernel_prior")
    denoiser = options.pop("kernel_denoiser", None)
    shipped_33 = denoiser is None and kernel_size == 33
    if kernel_prior in ("auto", "pnp") and denoiser is None:
        denoiser = default_kernel_denoiser(kernel_size, device)
    if kernel_prior == "auto":
        kernel_prior = "pnp" if denoiser is not None else "l2"
        if denoiser is None:
            warnings.warn(f"no kernel denoiser is shipped for kernel_size={kernel_size}: using the l2 kernel "
                          "regulariser (train one with `diffem train-kernel-denoiser --size N`)", stacklevel=3)
    elif kernel_prior == "pnp" and denoiser is None:
        raise ValueError(f"kernel_prior: no PnP kernel denoiser fits kernel_size={kernel_size}")
    if lam is None:  # the authors' λ = 1 (33×33) and 0.2 (64×64), but ours for our 33×33 denoiser
        lam = PNP_LAM_33 if shipped_33 and kernel_prior == "pnp" else (1.0 if kernel_size <= 48 else 0.2)
    opts = {k: options.pop(k) for k in list(options) if k in MSTEP_OPTIONS}
    hqs = {k: opts.pop(k) for k in list(opts) if k in HQS_DEFAULTS}
    return KernelMStep(hqs=dict(lam=lam, regulariser=kernel_prior, denoiser=denoiser, **hqs), **opts)


def _sampler_options(options: dict) -> dict:
    unknown = set(options) - set(SAMPLER_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return options


@dataclass
class _Setup:
    """What deblur and restore check and prepare alike."""

    prior: object
    y: torch.Tensor                     # (1, C, h, w) float32 on the device
    gray: bool
    sigma: float
    device: torch.device
    load_s: float


def _setup(y, sigma, prior, preset, device, n_particles) -> _Setup:
    sigma = parse_sigma(sigma)
    check_positive_int(n_particles, "n_particles")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    p = load_prior(prior, preset=preset, device=dev)
    load_s = time.perf_counter() - t0
    y4, gray = as_measurement(y, p.channels, dev)
    return _Setup(p, y4, gray, sigma, dev, load_s)


def _result(s: _Setup, physics: Blur, samples: torch.Tensor, kernel: torch.Tensor, run_s: float, n_steps: int,
            info: dict, kernels=None) -> Result:
    samples = physics.crop(samples)
    if s.gray:
        samples = samples.mean(1, keepdim=True)
    return Result(image=samples[0], kernel=kernel, samples=samples, kernels=kernels,
                  timings={"load_prior_s": s.load_s, "run_s": run_s, "per_step_s": run_s / n_steps},
                  info={"n_particles": samples.shape[0], "sigma": s.sigma, "boundary": physics.boundary, **info})


def deblur(y, sigma, prior="default", method: str = "multiscale-pnp", kernel_size: int = 33, n_particles: int = 1,
           steps: int | str | None = None, seed: int = 0, device="auto", progress: bool = True,
           kernel_init: torch.Tensor | None = None, kernel_prior: str = "auto", lam: float | None = None,
           n_em: int = 10, record_kernels: bool = False, preset: str | None = None, boundary: str = "circular",
           denoiser="ffdnet", output: str = "restored", **options) -> Result:
    """Blind deblurring: estimate the sharp image and the blur kernel from y = k ⊛ x + n.

    y: (C,H,W) or (1,C,H,W) tensor, (H,W,C) numpy array, or grayscale (H,W), float on [0,1]
    (unclipped noise is fine). sigma: noise std on [0,1] (a number or '5/255').
    method: multiscale-pnp (default: ``diffem.blind``; deterministic, any size, uses ``denoiser`` and
    not the prior; options ``fallback`` (True), ``kernel_settings`` (or its keys one by one: ``lam``,
    ``threshold``, …, see ``diffem.blind.multiscale.DEFAULTS``), ``pnp_settings``, ``refine_rounds``
    (``diffem.blind.pipeline.REFINE_ROUNDS``; 0: the kernel as estimated)) |
    fast-em-pigdm | fast-em-dps | em-pigdm | em-dps (the paper's, with ``prior``). For these,
    ``output="restored"`` (default) makes ``Result.image`` the PnP-HQS restoration (``denoiser``) with
    the estimated kernel, the best measured image stage; ``output="sample"`` keeps the paper's
    convention, the first posterior sample. ``Result.samples`` holds the samples either way.
    boundary: 'circular' (synthetic protocol, H and W multiples of ``prior.multiple``) or 'valid'
    (a real photo: no wrap-around, any size; the scene beyond y's border is sampled, not observed).
    steps: diffusion steps (default 100 for ΠGDM, 1000 for DPS, as the authors). kernel_size: ≥ 3.
    kernel_init: a starting kernel (any float dtype; normalised). kernel_prior: auto (PnP when a
    denoiser is shipped for the size, else ℓ2) | pnp | l2 | l1 | none. lam: the M-step's λ (default
    ``PNP_LAM_33`` with the shipped 33×33 kernel denoiser, else the authors' 1 (≤ 48 px) or 0.2).
    Other options go to the M-step (``KernelMStep`` fields and ``estimate_kernel`` keywords, e.g.
    ``beta``, ``n_iter``, ``every``, ``kernel_denoiser``, ``pigdm_damping=True`` for Eq. 33's term) or the
    DPS guidance (``dps_scale``).
    """
    method = check_choice(method, BLIND_METHODS, "method")
    output = check_choice(output, ("restored", "sample"), "output")
    if method == "multiscale-pnp":
        if lam is not None:   # λ of the ℓ0 latent image (the M-step's λ for the paper's samplers)
            options["lam"] = lam
        return _deblur_multiscale(y, sigma, kernel_size, boundary, denoiser, prior, device, progress, options)
    n_em = check_positive_int(n_em, "n_em")
    boundary = check_boundary(boundary)
    s = _setup(y, sigma, prior, preset, device, n_particles)
    kernel_size = check_kernel_size(kernel_size, s.y.shape)
    if kernel_init is None:
        k0 = delta_kernel(kernel_size, device=s.device)
    else:
        k0 = check_kernel(kernel_init, "kernel_init", device=s.device, normalise=True)
        if tuple(k0.shape) != (kernel_size, kernel_size):
            raise ValueError(f"kernel_init: expected shape ({kernel_size}, {kernel_size}), got {tuple(k0.shape)}")
    mstep = _mstep_for(kernel_size, s.device, kernel_prior, lam, options)
    opts = _sampler_options(options)
    guidance = method.rsplit("-", 1)[1]
    schedule = Schedule.for_prior(s.prior, steps if steps is not None else (100 if guidance == "pigdm" else 1000))
    physics = Blur.for_measurement(s.y, k0, s.sigma, boundary, s.prior.multiple)
    kernels = [] if record_kernels else None
    callback = (lambda d: kernels.append(d["kernel"].detach().cpu().clone())) if record_kernels else None
    common = dict(guidance=guidance, n=n_particles, seed=seed, callback=callback, disable=not progress, **opts)
    t1 = time.perf_counter()
    if method.startswith("fast-em"):
        samples, k = fast_diffusion_em(s.prior, s.y, physics, schedule, mstep=mstep, **common)
    else:
        samples, k = diffusion_em(s.prior, s.y, physics, schedule, mstep=mstep, n_em=n_em, **common)
    run_s = time.perf_counter() - t1
    settings = mstep.settings
    result = _result(s, physics, samples, k, run_s, len(schedule) * (n_em if method.startswith("em") else 1),
                     {"method": method, "steps": len(schedule), "kernel_prior": settings["regulariser"],
                      "lam": settings["lam"], "prior": s.prior.name, "output": output}, kernels)
    if output == "restored":   # the image from the estimated kernel with the best measured restorer
        from diffem.denoisers import load_denoiser
        from diffem.pnp import pnp_hqs

        t2 = time.perf_counter()
        y_obs, _ = as_measurement(y, None, s.device)
        pnp_physics = Blur.for_measurement(y_obs, k, s.sigma, boundary)
        den = load_denoiser(denoiser, device=s.device, prior=s.prior)
        result.image = pnp_physics.crop(pnp_hqs(y_obs, pnp_physics, den))[0].clamp(0, 1)
        result.timings["restore_s"] = time.perf_counter() - t2
    return result


def restore(y, kernel, sigma, prior="default", method: str = "pnp", n_particles: int = 1,
            steps: int | str | None = None, seed: int = 0, device="auto", progress: bool = True,
            preset: str | None = None, boundary: str = "circular", denoiser="ffdnet", **options) -> Result:
    """Non-blind restoration with a known kernel. y, sigma and boundary as in ``deblur`` (any size for
    'pnp'); kernel: (k, k) tensor or array (any float dtype), ≥ 0, sum 1. method:

    * ``pnp`` (default): PnP-HQS (``diffem.pnp``) around ``denoiser`` ("ffdnet", "prior": the
      diffusion prior's x̂0, or any callable ``denoiser(x, sigma)``); deterministic, one image.
      Options: ``iters`` (8), ``sigma_start`` (49/255), ``lam`` (0.23).
    * ``pigdm`` | ``dps``: Algorithm 1, diffusion posterior sampling with ``prior``.
    """
    method = check_choice(method, NONBLIND_METHODS, "method")
    boundary = check_boundary(boundary)
    kernel = check_kernel(kernel, "kernel")
    if method == "pnp":
        return _restore_pnp(y, kernel, sigma, boundary, denoiser, prior, device, progress, options)
    s = _setup(y, sigma, prior, preset, device, n_particles)
    check_kernel_size(kernel.shape[0], s.y.shape, name="kernel")
    opts = _sampler_options(options)
    schedule = Schedule.for_prior(s.prior, steps if steps is not None else (100 if method == "pigdm" else 1000))
    physics = Blur.for_measurement(s.y, kernel.to(s.device), s.sigma, boundary, s.prior.multiple)
    t1 = time.perf_counter()
    samples, k = posterior_sample(s.prior, s.y, physics, schedule, guidance=method, n=n_particles, seed=seed,
                                  disable=not progress, **opts)
    run_s = time.perf_counter() - t1
    return _result(s, physics, samples, k, run_s, len(schedule), {"method": method, "steps": len(schedule)})


PNP_OPTIONS = ("iters", "sigma_start", "lam")


def _restore_pnp(y, kernel, sigma, boundary, denoiser, prior, device, progress, options) -> Result:
    from diffem.denoisers import load_denoiser
    from diffem.pnp import pnp_hqs

    unknown = set(options) - set(PNP_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) for method='pnp': {', '.join(sorted(unknown))} (known: {', '.join(PNP_OPTIONS)})")
    sigma = parse_sigma(sigma)
    dev = resolve_device(device)
    y4, _ = as_measurement(y, None, dev)
    check_kernel_size(kernel.shape[0], y4.shape, name="kernel")
    t0 = time.perf_counter()
    den = load_denoiser(denoiser, device=dev, prior=prior)
    load_s = time.perf_counter() - t0
    physics = Blur.for_measurement(y4, kernel.to(dev), sigma, boundary)
    t1 = time.perf_counter()
    x = physics.crop(pnp_hqs(y4, physics, den, progress=progress, **options)).clamp(0, 1)
    run_s = time.perf_counter() - t1
    return Result(image=x[0], kernel=physics.kernel, samples=x, timings={"load_denoiser_s": load_s, "run_s": run_s},
                  info={"method": "pnp", "denoiser": getattr(den, "name", "custom"), "sigma": sigma,
                        "boundary": boundary, "n_particles": 1})


MULTISCALE_OPTIONS = ("fallback", "kernel_settings", "pnp_settings", "refine_rounds")


def _deblur_multiscale(y, sigma, kernel_size, boundary, denoiser, prior, device, progress, options) -> Result:
    from diffem.blind import deblur_multiscale
    from diffem.blind.multiscale import DEFAULTS
    from diffem.denoisers import load_denoiser

    # the kernel stage's settings may also come one by one (e.g. from a `diffem bench` method spec)
    flat = {k: options.pop(k) for k in list(options) if k in DEFAULTS}
    if flat:
        options["kernel_settings"] = {**options.get("kernel_settings", {}), **flat}
    unknown = set(options) - set(MULTISCALE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) for method='multiscale-pnp': {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(MULTISCALE_OPTIONS)})")
    boundary = check_boundary(boundary)
    sigma = parse_sigma(sigma)
    dev = resolve_device(device)
    y4, _ = as_measurement(y, None, dev)
    kernel_size = check_kernel_size(kernel_size, y4.shape)
    t0 = time.perf_counter()
    den = load_denoiser(denoiser, device=dev, prior=prior)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    x, k, info = deblur_multiscale(y4, sigma, kernel_size, den, boundary=boundary, progress=progress, **options)
    run_s = time.perf_counter() - t1
    timings = {"load_denoiser_s": load_s, "run_s": run_s,
               **{key: info.pop(key) for key in ("kernel_s", "restore_s", "refine_s", "check_s")}}
    return Result(image=x[0], kernel=k, samples=x, timings=timings,
                  info={"method": "multiscale-pnp", "denoiser": getattr(den, "name", "custom"), "sigma": sigma,
                        "boundary": boundary, "n_particles": 1, **info})
