"""The M-step: kernel estimation by half-quadratic splitting (Eq. 21–25).

Given particles x^i (n, C, H, W) on [0, 1] and the measurement y, HQS alternates
  Z_{j+1} = argmin_Z 1/(2σ²n) Σ_i ‖Z x^i − y‖² + β/2 ‖Z − K_j‖²        (Eq. 22, closed form Eq. 24)
  K_{j+1} = argmin_K λ Φ(K) + β/2 ‖K − Z_{j+1}‖²  (= D_{√(λ/β)}(Z) for PnP)   (Eq. 23, 25)
with a projection onto {k ≥ 0, Σk = 1} after each step.

For ΠGDM the particles are Gaussian, x ~ N(x̂0^i, r_t² I) (Eq. 33): the expectation adds
n·N·r_t² per channel to the Fourier denominator (N = H·W), a Tikhonov damping that fades as t → 0.
"""
from __future__ import annotations

from typing import Callable

import torch

from diffem.physics import crop_kernel, kernel_to_otf, project_simplex

KernelDenoiser = Callable[[torch.Tensor, float], torch.Tensor]
REGULARISERS = ("pnp", "l2", "l1", "none")


def hqs_data_step(X: torch.Tensor, Y: torch.Tensor, shape: tuple[int, int], k_prev: torch.Tensor, sigma: float,
                  beta: float, r2: float = 0.0, channel_mode: str = "joint", n_weight: bool = True) -> torch.Tensor:
    """Eq. 24 (+ the Eq. 33 damping). X: rfft2 of the particles (n,C,H,W'), Y: rfft2 of y (1,C,H,W'),
    shape = (H, W).

    ``channel_mode="joint"`` solves one system for the kernel shared by all channels (the sums run
    over particles and channels); ``"average"`` solves each channel and averages, as the authors do.
    ``n_weight`` uses the paper's nβσ² (Eq. 24); False uses the authors' βσ².
    """
    n = X.shape[0]
    ksize = k_prev.shape[-1]
    alpha = (n if n_weight else 1) * beta * max(sigma, 1e-8) ** 2
    Kp = kernel_to_otf(k_prev, shape)
    num = (X.conj() * Y).sum(0)                       # (C, H, W')
    den = (X.abs() ** 2).sum(0) + n * shape[0] * shape[1] * r2
    if channel_mode == "joint":
        Z = (num.sum(0) + alpha * Kp) / (den.sum(0) + alpha)
    elif channel_mode == "average":
        Z = ((num + alpha * Kp) / (den + alpha)).mean(0)
    else:
        raise ValueError(f"channel_mode: expected 'joint' or 'average', got {channel_mode!r}")
    z = torch.fft.irfft2(Z, s=shape)
    return project_simplex(crop_kernel(z, ksize))


def prior_step(z: torch.Tensor, regulariser: str, lam: float, beta: float,
               denoiser: KernelDenoiser | None = None) -> torch.Tensor:
    """Eq. 23 / 25: the proximal step of λΦ with weight β, then projection."""
    if regulariser == "none" or lam == 0:
        return z
    if regulariser == "l2":      # Φ = ‖K‖²
        return project_simplex(beta * z / (2 * lam + beta))
    if regulariser == "l1":      # Φ = ‖K‖₁ on k ≥ 0: soft threshold
        return project_simplex((z - lam / beta).clamp_min(0))
    if regulariser == "pnp":     # Eq. 25: K = D_{√(λ/β)}(Z)
        if denoiser is None:
            raise ValueError("denoiser: the 'pnp' regulariser needs a kernel denoiser D(k, sigma)")
        with torch.no_grad():
            out = denoiser(z[None, None], (lam / beta) ** 0.5)[0, 0]
        return project_simplex(out)
    raise ValueError(f"regulariser: expected one of {REGULARISERS}, got {regulariser!r}")


@torch.no_grad()
def estimate_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float, k_init: torch.Tensor, *, n_iter: int = 10,
                    lam: float = 1.0, beta: float = 1e5, regulariser: str = "pnp",
                    denoiser: KernelDenoiser | None = None, r2: float = 0.0, channel_mode: str = "joint",
                    n_weight: bool = True) -> torch.Tensor:
    """HQS kernel estimate (Eq. 21–25). x: (n,C,H,W) particles on [0,1]; y: (C,H,W) or (1,C,H,W);
    k_init: (k,k) warm start. Returns the (k,k) kernel (≥ 0, sum 1)."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser: expected one of {REGULARISERS}, got {regulariser!r}")
    y = y if y.dim() == 4 else y[None]
    X, Y = torch.fft.rfft2(x.to(torch.float64)), torch.fft.rfft2(y.to(torch.float64))
    k = k_init.to(torch.float64)
    for _ in range(n_iter):
        z = hqs_data_step(X, Y, x.shape[-2:], k, sigma, beta, r2=r2, channel_mode=channel_mode, n_weight=n_weight)
        k = prior_step(z.to(k_init.dtype), regulariser, lam, beta, denoiser).to(torch.float64)
    return k.to(k_init.dtype)
