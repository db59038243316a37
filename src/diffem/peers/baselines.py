"""Naive baselines: the blurry input itself, and non-blind ΠGDM with a fitted isotropic Gaussian kernel.

The Gaussian width is chosen on a 1-D grid: for each width s the measurement is deconvolved by a quick
Wiener filter (``diffem.physics.wiener_deconv``, gradient regulariser) and scored by the normalised
sparsity of the result's gradient, ‖∇x‖₁/‖∇x‖₂ (Krishnan et al. 2011). Too narrow a kernel leaves blur (spread gradients), too wide a
kernel rings (many small oscillations); both raise the ratio, so the minimum is the best fit.
"""
from __future__ import annotations

import numpy as np
import torch

from diffem.kernels.generators import gaussian_kernel
from diffem.measurement import as_image, check_kernel_size, parse_sigma
from diffem.physics import delta_kernel, wiener_deconv

DEFAULT_WIDTHS = tuple(np.round(np.concatenate([[0.0], np.geomspace(0.3, 8.0, 40)]), 4))


def isotropic_gaussian(size: int, width: float, dtype=torch.float64) -> torch.Tensor:
    """Isotropic Gaussian of std ``width`` px centred at ⌊size/2⌋; width 0 = delta."""
    return delta_kernel(size, dtype=dtype) if width <= 0 else gaussian_kernel(size, width, dtype=dtype)


def normalised_sparsity(x: torch.Tensor) -> float:
    gx = torch.roll(x, -1, -1) - x
    gy = torch.roll(x, -1, -2) - x
    g = torch.cat([gx.flatten(), gy.flatten()])
    return float(g.abs().sum() / g.norm().clamp_min(1e-12))


def fit_gaussian_width(y, sigma: float, kernel_size: int, widths=DEFAULT_WIDTHS) -> tuple[float, dict]:
    """Width (std in px) of the isotropic Gaussian that best explains y, by the criterion above.
    Returns (width, {width: score})."""
    y = as_image(y, dtype=torch.float64)[0].mean(0)
    # Wiener weight λ = 50·max(σ², 1e-5): the noise-to-signal ratio of natural gradients
    scores = {float(w): normalised_sparsity(wiener_deconv(y, isotropic_gaussian(kernel_size, w), sigma,
                                                          lam_scale=50.0, lam_min=5e-4))
              for w in widths}
    best = min(scores, key=scores.get)
    return best, scores


def blurry_baseline(y, sigma: float = 0.0, kernel_size: int = 33):
    """The measurement itself (clipped to [0,1]) with a delta kernel."""
    return as_image(y)[0].clamp(0, 1), delta_kernel(kernel_size)


def gauss_pigdm(y, sigma: float, kernel_size: int = 33, prior="default", steps=100, seed: int = 0,
                progress: bool = True, widths=DEFAULT_WIDTHS, device="cpu", **options):
    """Non-blind ΠGDM (``diffem.restore``) with the fitted isotropic Gaussian kernel.
    Returns (image (C,H,W), kernel (k,k), width)."""
    from diffem.api import restore
    y = as_image(y, dtype=torch.float64)      # the fit works in float64; restore takes any float
    sigma = parse_sigma(sigma)
    kernel_size = check_kernel_size(kernel_size, y.shape)
    width, _ = fit_gaussian_width(y, sigma, kernel_size, widths)
    k = isotropic_gaussian(kernel_size, width, dtype=torch.float32)
    res = restore(y, k, sigma, prior=prior, method="pigdm", steps=steps, seed=seed, progress=progress,
                  device=device, **options)
    return res.image, k, width
