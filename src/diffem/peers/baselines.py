"""Naive baselines: the blurry input itself, and non-blind ΠGDM with a fitted isotropic Gaussian kernel.

The Gaussian width is chosen on a 1-D grid: for each width s the measurement is deconvolved by a quick
Wiener filter (gradient regulariser) and scored by the normalised sparsity of the result's gradient,
‖∇x‖₁/‖∇x‖₂ (Krishnan et al. 2011). Too narrow a kernel leaves blur (spread gradients), too wide a
kernel rings (many small oscillations); both raise the ratio, so the minimum is the best fit.
"""
from __future__ import annotations

import numpy as np
import torch

from diffem.api import as_chw
from diffem.physics import delta_kernel, kernel_to_otf

DEFAULT_WIDTHS = tuple(np.round(np.concatenate([[0.0], np.geomspace(0.3, 8.0, 40)]), 4))


def gaussian_kernel(size: int, width: float, dtype=torch.float64) -> torch.Tensor:
    """Isotropic Gaussian of std ``width`` px on a size×size grid centred at ⌊size/2⌋; width 0 = delta."""
    if width <= 0:
        return delta_kernel(size, dtype=dtype)
    r = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * width ** 2))
    return g / g.sum()


def wiener_gradient(y: torch.Tensor, kernel: torch.Tensor, reg: float) -> torch.Tensor:
    """argmin_x ‖k⊛x − y‖² + reg‖∇x‖², closed form in Fourier (circular)."""
    shape = y.shape[-2:]
    K = kernel_to_otf(kernel.to(y.dtype), shape)
    fy = torch.fft.rfftfreq(shape[1], dtype=y.dtype)
    fx = torch.fft.fftfreq(shape[0], dtype=y.dtype)
    D2 = (2 - 2 * torch.cos(2 * np.pi * fx))[:, None] + (2 - 2 * torch.cos(2 * np.pi * fy))[None, :]
    return torch.fft.irfft2(K.conj() * torch.fft.rfft2(y) / (K.abs() ** 2 + reg * D2), s=shape)


def normalised_sparsity(x: torch.Tensor) -> float:
    gx = torch.roll(x, -1, -1) - x
    gy = torch.roll(x, -1, -2) - x
    g = torch.cat([gx.flatten(), gy.flatten()])
    return float(g.abs().sum() / g.norm().clamp_min(1e-12))


def fit_gaussian_width(y, sigma: float, kernel_size: int, widths=DEFAULT_WIDTHS) -> tuple[float, dict]:
    """Width (std in px) of the isotropic Gaussian that best explains y, by the criterion above.
    Returns (width, {width: score})."""
    y = as_chw(y).double().mean(0)
    reg = max(float(sigma) ** 2, 1e-5) * 50.0   # Wiener weight: noise-to-signal of natural gradients
    scores = {float(w): normalised_sparsity(wiener_gradient(y, gaussian_kernel(kernel_size, w), reg))
              for w in widths}
    best = min(scores, key=scores.get)
    return best, scores


def blurry_baseline(y, sigma: float = 0.0, kernel_size: int = 33):
    """The measurement itself (clipped to [0,1]) with a delta kernel."""
    y = as_chw(y)
    return y.float().clamp(0, 1), delta_kernel(kernel_size)


def gauss_pigdm(y, sigma: float, kernel_size: int = 33, prior="default", steps=100, seed: int = 0,
                progress: bool = True, widths=DEFAULT_WIDTHS, device="cpu", **options):
    """Non-blind ΠGDM (``diffem.restore``) with the fitted isotropic Gaussian kernel.
    Returns (image (C,H,W), kernel (k,k), width)."""
    from diffem.api import restore
    width, _ = fit_gaussian_width(y, sigma, kernel_size, widths)
    k = gaussian_kernel(kernel_size, width, dtype=torch.float32)
    res = restore(as_chw(y).float(), k, sigma, prior=prior, method="pigdm", steps=steps, seed=seed,
                  progress=progress, device=device, **options)
    return res.image, k, width
