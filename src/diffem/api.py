"""The top-level API: ``deblur`` (blind), ``restore`` (non-blind), ``Result``."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from diffem.physics import Blur, delta_kernel, valid_canvas
from diffem.priors import Prior, load_prior
from diffem.samplers import KernelMStep, diffusion_em, fast_diffusion_em, posterior_sample
from diffem.schedule import Schedule

BLIND_METHODS = ("fast-em-pigdm", "fast-em-dps", "em-pigdm", "em-dps")
NONBLIND_METHODS = ("pigdm", "dps")
# circular: y = k ⊛ x with wrap-around (the paper's synthetic protocol; H, W multiples of prior.multiple).
# valid: y is the valid part of k ⊛ x for a larger scene (real photos): any size, no wrap-around.
BOUNDARIES = ("circular", "valid")


@dataclass
class Result:
    """``image`` is the first posterior sample (the paper's convention), ``mean`` the mean of the n samples."""

    image: torch.Tensor                 # (C, H, W) on [0, 1]
    kernel: torch.Tensor                # (k, k), ≥ 0, sum 1
    samples: torch.Tensor               # (n, C, H, W)
    timings: dict = field(default_factory=dict)
    kernels: list | None = None         # per-step kernels when record_kernels=True
    info: dict = field(default_factory=dict)

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(0)


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA GPU is available")
    return dev


def _check_sigma(sigma) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma: expected a number, got {sigma!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"sigma: must be finite and > 0 (noise std on the [0,1] scale), got {sigma!r}")
    return s


def as_chw(y) -> torch.Tensor:
    """One image as (C, H, W): accepts (H, W), (C, H, W), (1, C, H, W), tensors or numpy arrays."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y: expected a torch tensor or numpy array, got {type(y).__name__}")
    if y.dim() == 4:
        if y.shape[0] != 1:
            raise ValueError(f"y: one image at a time, got a batch of {y.shape[0]}")
        y = y[0]
    if y.dim() == 2:
        y = y[None]
    if y.dim() != 3:
        raise ValueError(f"y: expected (H,W), (C,H,W) or (1,C,H,W), got shape {tuple(y.shape)}")
    return y


def prepare_measurement(y, channels: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Returns y as (1, channels, H, W) float32 on device (a copy) and whether it was grayscale.

    Grayscale input, (H, W) or (1, H, W), is replicated to the prior's channels and the output is
    averaged back to one channel.
    """
    y = as_chw(y)
    if not y.is_floating_point():
        raise ValueError(f"y: expected a floating-point image in [0, 1], got dtype {y.dtype}")
    gray = y.shape[0] == 1 and channels != 1
    if gray:
        y = y.expand(channels, -1, -1)
    if y.shape[0] != channels:
        raise ValueError(f"y: the prior needs {channels} channels (or 1 for grayscale), got {y.shape[0]}")
    if not torch.isfinite(y).all():
        raise ValueError("y: contains NaN or infinite values")
    if min(y.shape[-2:]) < 8:
        raise ValueError(f"y: image of size {tuple(y.shape[-2:])} is too small")
    return y.to(device=device, dtype=torch.float32).clone()[None], gray


def _check_same_device_dtype(name: str, t, y) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor, got {type(t).__name__}")
    if isinstance(y, torch.Tensor):
        if t.device != y.device:
            raise ValueError(f"{name}: on {t.device} but y is on {y.device}")
        if t.dtype != y.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} does not match y's {y.dtype}")


def _check_multiple(prior, shape) -> None:
    m = getattr(prior, "multiple", 1)
    if shape[0] % m or shape[1] % m:
        raise ValueError(f"y: this prior needs height and width multiples of {m}, got {shape[0]}x{shape[1]} "
                         "(or use boundary='valid', which pads; `diffem deblur` does it for you)")


def _check_boundary(boundary) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    return boundary


def _physics_for(y4, kernel, sigma, boundary: str, prior) -> tuple[Blur, torch.Tensor, tuple | None]:
    """The measurement operator, y on the sampler's grid, and the box to crop results back to (or None)."""
    if boundary == "circular":
        _check_multiple(prior, y4.shape[-2:])
        return Blur(kernel, sigma), y4, None
    canvas, mask, box = valid_canvas(y4, kernel.shape[-1], getattr(prior, "multiple", 1))
    return Blur(kernel, sigma, mask=mask), canvas, box


def _crop(x: torch.Tensor, box: tuple | None) -> torch.Tensor:
    if box is None:
        return x
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def _check_kernel_size(kernel_size, shape) -> int:
    if not isinstance(kernel_size, (int, np.integer)) or isinstance(kernel_size, bool):
        raise ValueError(f"kernel_size: expected an integer, got {kernel_size!r}")
    if kernel_size < 3:
        raise ValueError(f"kernel_size: must be >= 3, got {kernel_size}")
    if kernel_size > min(shape):
        raise ValueError(f"kernel_size: {kernel_size} is larger than the image {shape[0]}x{shape[1]}")
    return int(kernel_size)


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _load(prior, device, preset=None) -> Prior:
    p = load_prior(prior, preset=preset, device=device)
    p.eval()
    for q in p.parameters():
        q.requires_grad_(False)
    return p


def default_kernel_denoiser(kernel_size: int, device):
    """The shipped PnP kernel denoiser for this size, or None when none fits."""
    try:
        from diffem.kernels.denoiser import load_kernel_denoiser
        return load_kernel_denoiser(kernel_size, device=device)
    except (ImportError, FileNotFoundError, ValueError):
        return None


def _mstep_for(kernel_size: int, device, regulariser: str, lam: float | None, options: dict) -> KernelMStep:
    denoiser = options.pop("denoiser", None)
    if regulariser == "auto":
        denoiser = denoiser or default_kernel_denoiser(kernel_size, device)
        regulariser = "pnp" if denoiser is not None else "l2"
        if denoiser is None:
            warnings.warn(f"no kernel denoiser is shipped for kernel_size={kernel_size}: using the l2 kernel "
                          "regulariser (train one with `diffem train-kernel-denoiser --size N`)", stacklevel=3)
    elif regulariser == "pnp" and denoiser is None:
        denoiser = default_kernel_denoiser(kernel_size, device)
        if denoiser is None:
            raise ValueError(f"kernel_prior: no PnP kernel denoiser fits kernel_size={kernel_size}")
    if lam is None:  # the authors' values: λ = 1 for 33×33, 0.2 for 64×64
        lam = 1.0 if kernel_size <= 48 else 0.2
    keys = {f for f in KernelMStep.__dataclass_fields__} - {"lam", "regulariser", "denoiser"}
    kw = {k: options.pop(k) for k in list(options) if k in keys}
    return KernelMStep(lam=lam, regulariser=regulariser, denoiser=denoiser, **kw)


def _sampler_options(options: dict) -> dict:
    allowed = {"dps_scale"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return options


def deblur(y, sigma, prior="default", method: str = "fast-em-pigdm", kernel_size: int = 33, n_particles: int = 1,
           steps: int | str | None = None, seed: int = 0, device="auto", progress: bool = True,
           kernel_init: torch.Tensor | None = None, kernel_prior: str = "auto", lam: float | None = None,
           n_em: int = 10, record_kernels: bool = False, preset: str | None = None, boundary: str = "circular",
           **options) -> Result:
    """Blind deblurring: estimate the sharp image and the blur kernel from y = k ⊛ x + n.

    y: (C,H,W), (1,C,H,W) or grayscale (H,W)/(1,H,W), float on [0,1] (unclipped noise is fine).
    sigma: noise std on [0,1]. method: fast-em-pigdm | fast-em-dps | em-pigdm | em-dps.
    boundary: 'circular' (synthetic protocol, H and W multiples of ``prior.multiple``) or 'valid'
    (a real photo: no wrap-around, any size; the scene beyond y's border is sampled, not observed).
    steps: diffusion steps (default 100 for ΠGDM, 1000 for DPS, as the authors). kernel_prior:
    auto (PnP when a denoiser is shipped for the size, else ℓ2) | pnp | l2 | l1 | none.
    Other options go to the M-step (``KernelMStep`` fields) or the DPS guidance (dps_scale).
    """
    if method not in BLIND_METHODS:
        raise ValueError(f"method: expected one of {BLIND_METHODS}, got {method!r}")
    sigma = _check_sigma(sigma)
    n_particles = _check_positive_int("n_particles", n_particles)
    n_em = _check_positive_int("n_em", n_em)
    boundary = _check_boundary(boundary)
    dev = resolve_device(device)
    if kernel_init is not None:
        _check_same_device_dtype("kernel_init", kernel_init, y)
    t0 = time.perf_counter()
    p = _load(prior, dev, preset)
    t_load = time.perf_counter() - t0
    y4, gray = prepare_measurement(y, p.channels, dev)
    kernel_size = _check_kernel_size(kernel_size, y4.shape[-2:])
    guidance = method.rsplit("-", 1)[1]
    schedule = Schedule(steps if steps is not None else (100 if guidance == "pigdm" else 1000), T=p.T, betas=p.betas)
    if kernel_init is None:
        k0 = delta_kernel(kernel_size, device=dev)
    else:
        if tuple(kernel_init.shape) != (kernel_size, kernel_size):
            raise ValueError(f"kernel_init: expected shape ({kernel_size}, {kernel_size}), got {tuple(kernel_init.shape)}")
        if not torch.isfinite(kernel_init).all() or (kernel_init < 0).any() or float(kernel_init.sum()) <= 0:
            raise ValueError("kernel_init: must be finite, non-negative and not all zero")
        k0 = kernel_init.to(device=dev, dtype=torch.float32) / float(kernel_init.sum())
    mstep = _mstep_for(kernel_size, dev, kernel_prior, lam, options)
    opts = _sampler_options(options)
    physics, y4, box = _physics_for(y4, k0, sigma, boundary, p)
    gen = torch.Generator().manual_seed(int(seed))
    kernels = [] if record_kernels else None
    callback = (lambda d: kernels.append(d["kernel"].detach().cpu().clone())) if record_kernels else None
    t1 = time.perf_counter()
    if method.startswith("fast-em"):
        samples, k = fast_diffusion_em(p, y4, physics, schedule, mstep=mstep, guidance=guidance, n=n_particles,
                                       generator=gen, callback=callback, disable=not progress, **opts)
    else:
        samples, k = diffusion_em(p, y4, physics, schedule, mstep=mstep, n_em=n_em, guidance=guidance,
                                  n=n_particles, generator=gen, callback=callback, disable=not progress, **opts)
    t_run = time.perf_counter() - t1
    samples = _crop(samples, box)
    if gray:
        samples = samples.mean(1, keepdim=True)
    return Result(image=samples[0], kernel=k, samples=samples, kernels=kernels,
                  timings={"load_prior_s": t_load, "run_s": t_run, "per_step_s": t_run / (len(schedule) * (n_em if method.startswith("em") else 1))},
                  info={"method": method, "steps": len(schedule), "n_particles": n_particles, "sigma": sigma,
                        "boundary": boundary, "kernel_prior": mstep.regulariser, "lam": mstep.lam, "prior": getattr(p, "name", "prior")})


def restore(y, kernel, sigma, prior="default", method: str = "pigdm", n_particles: int = 1,
            steps: int | str | None = None, seed: int = 0, device="auto", progress: bool = True,
            preset: str | None = None, boundary: str = "circular", **options) -> Result:
    """Non-blind restoration with a known kernel (Algorithm 1): method pigdm | dps; boundary as in ``deblur``."""
    if method not in NONBLIND_METHODS:
        raise ValueError(f"method: expected one of {NONBLIND_METHODS}, got {method!r}")
    sigma = _check_sigma(sigma)
    boundary = _check_boundary(boundary)
    n_particles = _check_positive_int("n_particles", n_particles)
    dev = resolve_device(device)
    if isinstance(kernel, np.ndarray):  # numpy kernels adopt y's dtype and device
        like = y if isinstance(y, torch.Tensor) else torch.empty(0)
        kernel = torch.from_numpy(np.ascontiguousarray(kernel)).to(dtype=like.dtype, device=like.device)
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel: expected a square (k, k) array, got {getattr(kernel, 'shape', type(kernel))}")
    _check_same_device_dtype("kernel", kernel, y)
    if not torch.isfinite(kernel).all() or (kernel < 0).any() or abs(float(kernel.sum()) - 1) > 1e-3:
        raise ValueError("kernel: must be finite, non-negative and sum to 1")
    t0 = time.perf_counter()
    p = _load(prior, dev, preset)
    t_load = time.perf_counter() - t0
    y4, gray = prepare_measurement(y, p.channels, dev)
    _check_kernel_size(kernel.shape[0], y4.shape[-2:])
    schedule = Schedule(steps if steps is not None else (100 if method == "pigdm" else 1000), T=p.T, betas=p.betas)
    physics, y4, box = _physics_for(y4, kernel.to(device=dev, dtype=torch.float32).clone(), sigma, boundary, p)
    gen = torch.Generator().manual_seed(int(seed))
    t1 = time.perf_counter()
    samples, k = posterior_sample(p, y4, physics, schedule, guidance=method, n=n_particles, generator=gen,
                                  disable=not progress, **_sampler_options(options))
    t_run = time.perf_counter() - t1
    samples = _crop(samples, box)
    if gray:
        samples = samples.mean(1, keepdim=True)
    return Result(image=samples[0], kernel=k, samples=samples,
                  timings={"load_prior_s": t_load, "run_s": t_run, "per_step_s": t_run / len(schedule)},
                  info={"method": method, "steps": len(schedule), "n_particles": n_particles, "sigma": sigma,
                        "boundary": boundary})
