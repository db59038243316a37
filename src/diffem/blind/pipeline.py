"""diffem's default blind method, ``multiscale-pnp``: the kernel by coarse-to-fine ℓ0/NNLS estimation
on the pre-denoised image, the image by PnP-HQS with that kernel, then a data-fit safeguard.

1. Pre-denoise y with the image denoiser at σ (Anger, Delbracio & Facciolo, ISPA 2019): the ℓ0 latent
   image and the kernel's least squares need almost noise-free gradients.
2. Kernel: ``multiscale.estimate_kernel_multiscale`` on the grey (channel-mean) denoised image. For
   the 'valid' boundary the image is first extended smoothly and periodically (``pad_periodic``) so
   that the circular model of the kernel stage makes no wrap-around edge. (``estimate_kernel`` also
   offers the ℓ0-NNLS scheme, ``estimator="l0-nnls"``, and the phase-retrieved spectral kernel,
   ``estimator="spectral"``: the photo pipeline's candidates for long blurs.)
3. Image: ``pnp.pnp_hqs`` on y with the estimated kernel and the measurement's own boundary.
4. Safeguard (``safeguard.check_kernel``): a kernel whose restoration explains y clearly worse than
   the no-blur hypothesis does is marked untrusted in ``info`` and, with ``fallback=True``, the
   conservative result (y denoised) is returned instead.
"""
from __future__ import annotations

import time

import torch

from diffem.blind.multiscale import default_lam, estimate_kernel_multiscale
from diffem.blind.safeguard import check_kernel
from diffem.blind.spectral import estimate_kernel_spectral
from diffem.physics import Blur, delta_kernel
from diffem.pnp import pnp_hqs
from diffem.padding import pad_periodic


ESTIMATORS = ("multiscale", "l0-nnls", "spectral", "spectral-flipped")


def predenoise(y: torch.Tensor, sigma: float, denoiser) -> torch.Tensor:
    """Step 1: the grey (channel-mean) image (h, w) of (1, C, h, w) y denoised at σ."""
    with torch.no_grad():
        return denoiser(y, sigma)[0].mean(0)


def estimate_kernel(y: torch.Tensor, sigma: float, kernel_size: int, denoiser, boundary: str = "circular",
                    trusted: torch.Tensor | None = None, estimator: str = "multiscale", **settings) -> torch.Tensor:
    """Steps 1–2: the (k, k) kernel of (1, C, h, w) y (``estimate_kernel_denoised`` of ``predenoise``)."""
    return estimate_kernel_denoised(predenoise(y, sigma, denoiser), sigma, kernel_size, boundary, trusted,
                                    estimator, **settings)


def estimate_kernel_denoised(v: torch.Tensor, sigma: float, kernel_size: int, boundary: str = "circular",
                             trusted: torch.Tensor | None = None, estimator: str = "multiscale",
                             **settings) -> torch.Tensor:
    """Step 2: the (k, k) kernel from ``predenoise``'s grey image v (h, w).

    estimator "multiscale" (``estimate_kernel_multiscale``, tuned on ≤ 33 px kernels): for 'valid', v is
    put on a canvas larger by ⌊k/2⌋ (a smooth periodic extension as the start value) whose margin is
    missing data; ``trusted`` (h, w) bool marks the pixels that are data (e.g. not saturated).
    estimator "l0-nnls": the ℓ0 scheme of Anger et al. (``peers.l0.kernel_of_grey``: the latent image
    carried across scales, kernel step first, factor ½ down to 3 px, λ from 4e-3, edge taper for
    'valid') with the NNLS kernel step. It finds the long (51–75 px) trajectories that the other loses
    to the no-blur solution on the photo dev set (docs/benchmarks/realphoto.md); ``settings`` and
    ``trusted`` are not used by it.
    estimator "spectral" / "spectral-flipped" (``spectral.estimate_kernel_spectral``): the kernel
    phase-retrieved from the autocorrelation of v's gradients, or its mirror image (the two are
    indistinguishable there), on the same canvas and trusted pixels as "multiscale"; ``settings`` go
    to ``spectral.DEFAULTS``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "l0-nnls":
        from diffem.peers.l0 import kernel_of_grey   # (peers import diffem.blind)

        return kernel_of_grey(v.double(), kernel_size, boundary, kernel_solver="nnls").float()
    mask = None if trusted is None else trusted.reshape(v.shape).bool()
    if boundary == "valid":
        v, box = pad_periodic(v, kernel_size // 2 + 2)
        observed = torch.zeros(v.shape, dtype=torch.bool)
        top, left, h, w = box
        observed[top:top + h, left:left + w] = True if mask is None else mask
        mask = observed
    if estimator.startswith("spectral"):
        return estimate_kernel_spectral(v, kernel_size, mask, flipped=estimator == "spectral-flipped", **settings)
    settings.setdefault("lam", default_lam(sigma))
    return estimate_kernel_multiscale(v, kernel_size, mask=mask, **settings)


def deblur_multiscale(y: torch.Tensor, sigma: float, kernel_size: int, denoiser, *, boundary: str = "circular",
                      fallback: bool = True, progress: bool = False, kernel_settings: dict | None = None,
                      pnp_settings: dict | None = None,
                      trusted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Steps 1–4 on (1, C, h, w) y. Returns (image (1, C, h, w) on [0, 1], kernel (k, k), info);
    ``trusted`` (h, w) bool: the pixels the likelihood may use (None: all)."""
    t0 = time.perf_counter()
    kernel = estimate_kernel(y, sigma, kernel_size, denoiser, boundary, trusted, **(kernel_settings or {}))
    t1 = time.perf_counter()
    physics = Blur.for_measurement(y, kernel.to(y.device), sigma, boundary, trusted=trusted)
    x_canvas = pnp_hqs(y, physics, denoiser, progress=progress, **(pnp_settings or {}))
    x = physics.crop(x_canvas).clamp(0, 1)
    t2 = time.perf_counter()
    # the check restores with its calibrated data step unless that one has a closed form (no CG)
    verdict = check_kernel(y, x_canvas if physics.mask is None else None, physics, denoiser, **(pnp_settings or {}))
    info = {"kernel_s": t1 - t0, "restore_s": t2 - t1, "check_s": time.perf_counter() - t2, **verdict}
    if fallback and not verdict["kernel_trusted"]:
        x, kernel = verdict.pop("fallback_image"), delta_kernel(kernel_size, device=y.device)
        info["output"] = "fallback: denoised input (the estimated kernel is in info['rejected_kernel'])"
        info["rejected_kernel"] = physics.kernel.cpu()
    else:
        info["output"] = "restored with the estimated kernel"
    info.pop("fallback_image", None)
    info.pop("restored_image")
    return x, kernel, info
