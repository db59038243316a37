"""Non-blind Plug-&-Play restoration: half-quadratic splitting around a denoiser (DPIR-style).

For y = A x + n with noise std σ, HQS alternates, for k = 1 … K with a decreasing noise level σ_k,

    z_k = argmin_x ‖y − A x‖² + ρ_k ‖x − x_{k−1}‖²,   ρ_k = λ σ² / σ_k²      (data step, exact)
    x_k = D(z_k, σ_k)                                                        (prior step: a denoiser)

σ_k is geometric from ``sigma_start`` (49/255) down to σ; λ = 0.23 (Zhang et al., DPIR, TPAMI 2021).
A is the blur with either boundary:

* circular: the data step is diagonal in Fourier, z = F⁻¹[(K̄ Y + ρ X) / (|K|² + ρ)];
* valid: y is the non-circular blur of a scene larger by ⌊k/2⌋ on every side; x lives on that larger
  canvas and the data step (AᵀA + ρ) z = Aᵀy + ρ x is solved by conjugate gradients preconditioned
  with its circular counterpart (a few iterations: the two differ only near the border).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from diffem.physics import blur, blur_adjoint, kernel_to_otf, valid_canvas

SIGMA_START = 49 / 255
LAMBDA = 0.23
ITERATIONS = 8


def pnp_schedule(sigma: float, iters: int = ITERATIONS, sigma_start: float = SIGMA_START,
                 lam: float = LAMBDA) -> list[tuple[float, float]]:
    """[(σ_k, ρ_k)]: σ_k geometric from max(sigma_start, σ) to σ, ρ_k = λ σ² / σ_k²."""
    top = max(sigma_start, sigma)
    sigmas = np.geomspace(top, sigma, iters) if iters > 1 else np.array([sigma])
    return [(float(s), lam * sigma ** 2 / float(s) ** 2) for s in sigmas]


class CircularProx:
    """argmin_x ‖y − k⊛x‖² + ρ‖x − v‖² for a circular blur, in closed form."""

    def __init__(self, y: torch.Tensor, kernel: torch.Tensor):
        self.shape = y.shape[-2:]
        self.K = kernel_to_otf(kernel.to(y.dtype), self.shape)
        self.KtY = self.K.conj() * torch.fft.rfft2(y)
        self.K2 = self.K.abs() ** 2

    def start(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, v: torch.Tensor, rho: float) -> torch.Tensor:
        return torch.fft.irfft2((self.KtY + rho * torch.fft.rfft2(v)) / (self.K2 + rho), s=self.shape)


class ValidProx:
    """argmin_x ‖y − valid(k⊛x)‖² + ρ‖x − v‖² on a canvas ⌊k/2⌋ larger than y on every side, by
    conjugate gradients preconditioned with the circular solve (exact model: no boundary assumption)."""

    def __init__(self, y: torch.Tensor, kernel: torch.Tensor, cg_iters: int = 8, multiple: int = 2):
        self.kernel = kernel.to(y.dtype)
        canvas, self.mask, self.box = valid_canvas(y, kernel.shape[-1], multiple)
        self.canvas = canvas
        self.shape = canvas.shape[-2:]
        self.mask = self.mask.to(y.dtype)
        self.Aty = blur_adjoint(self.mask * torch.where(self.mask.bool(), canvas, 0.0), self.kernel)
        self.K2 = kernel_to_otf(self.kernel, self.shape).abs() ** 2
        self.cg_iters = cg_iters

    def start(self, y: torch.Tensor) -> torch.Tensor:
        return self.canvas.clone()

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        return x[..., top:top + h, left:left + w]

    def _normal(self, x: torch.Tensor, rho: float) -> torch.Tensor:
        return blur_adjoint(self.mask * blur(x, self.kernel), self.kernel) + rho * x

    def _precondition(self, r: torch.Tensor, rho: float) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(r) / (self.K2 + rho), s=self.shape)

    def __call__(self, v: torch.Tensor, rho: float) -> torch.Tensor:
        b = self.Aty + rho * v
        x = v.clone()
        r = b - self._normal(x, rho)
        z = self._precondition(r, rho)
        p = z
        rz = (r * z).sum()
        for _ in range(self.cg_iters):
            Ap = self._normal(p, rho)
            a = rz / (p * Ap).sum().clamp_min(1e-30)
            x = x + a * p
            r = r - a * Ap
            z = self._precondition(r, rho)
            rz_new = (r * z).sum()
            p = z + (rz_new / rz.clamp_min(1e-30)) * p
            rz = rz_new
        return x


@torch.no_grad()
def pnp_hqs(y: torch.Tensor, kernel: torch.Tensor, sigma: float, denoiser, *, boundary: str = "circular",
            iters: int = ITERATIONS, sigma_start: float = SIGMA_START, lam: float = LAMBDA,
            progress: bool = False) -> torch.Tensor:
    """PnP-HQS restoration of (1,C,H,W) y blurred by (k,k) ``kernel`` with noise std σ; returns (1,C,H,W)."""
    prox = CircularProx(y, kernel) if boundary == "circular" else ValidProx(y, kernel)
    x = prox.start(y)
    for sigma_k, rho in tqdm(pnp_schedule(sigma, iters, sigma_start, lam), desc="PnP-HQS", disable=not progress,
                             leave=False):
        z = prox(x, rho)                 # data step
        x = denoiser(z, sigma_k)         # prior step
    return prox.crop(x)


__all__ = ["pnp_hqs", "pnp_schedule", "CircularProx", "ValidProx"]
