"""Likelihood guidance ∇_{x_t} log p(y | x_t, k) for a circular blur: ΠGDM (Eq. 17) and DPS (Eq. 16).

Both work on the [0, 1] scale, like the measurement: x̂0_01 = (x̂0 + 1)/2. Each function takes the
graph-carrying x̂0_01 (a function of x_t) and returns the step to *add* to x'_{t−1} after the
unconditional DDPM step, as the authors do (reference notes §1.3–1.4).
"""
from __future__ import annotations

import math

import torch

from diffem.physics import blur, kernel_to_otf
from diffem.schedule import Schedule


def pigdm_r2(schedule: Schedule, i: int) -> float:
    """The authors' r_t² = s_t / (1 + s_t), with s_t the DDPM posterior variance σ̃²_t of the chain."""
    s = schedule.posterior_variance[i]
    return float(s / (1 + s))


def pigdm_vector(x0_01: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, sigma: float, r2: float) -> torch.Tensor:
    """Eq. 17 without the Jacobian: v = Hᵀ (r² H Hᵀ + σ² I)⁻¹ (y − H x̂0), in closed form in Fourier:
    v = F⁻¹[ conj(K) (Y − K X) / (r² |K|² + σ²) ]."""
    K = kernel_to_otf(kernel.to(x0_01.dtype), x0_01.shape[-2:])
    X, Y = torch.fft.rfft2(x0_01), torch.fft.rfft2(y)
    sigma2 = max(sigma, 1e-8) ** 2
    return torch.fft.irfft2(K.conj() * (Y - K * X) / (r2 * K.abs() ** 2 + sigma2), s=x0_01.shape[-2:])


def pigdm_guidance(x_t: torch.Tensor, x0_01: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, sigma: float,
                   schedule: Schedule, i: int) -> torch.Tensor:
    """ΠGDM step: ζ_t (∂x̂0/∂x_t)ᵀ v, one vector–Jacobian product through the network.

    ζ_t = √ᾱ_t · r_t² / √(1 + s_t) (the authors' weighting); no guidance at the last step (r = 0).
    """
    r2 = pigdm_r2(schedule, i)
    if r2 == 0.0:
        return torch.zeros_like(x_t)
    v = pigdm_vector(x0_01.detach(), y, kernel, sigma, r2)
    (grad,) = torch.autograd.grad(x0_01, x_t, grad_outputs=v)
    s = schedule.posterior_variance[i]
    zeta = math.sqrt(schedule.alphas_cumprod[i]) * r2 / math.sqrt(1 + s)
    return zeta * grad


def dps_guidance(x_t: torch.Tensor, x0_01: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, sigma: float,
                 schedule: Schedule, i: int, scale: float = 1.0) -> torch.Tensor:
    """DPS step as the authors implement Eq. 16: −ζ_t ∇_{x_t} ‖y − k⊛x̂0‖₂ with ζ_t = √ᾱ_t.

    The norm is not squared and has no 1/σ² (the literal Eq. 16 diverges at small σ without a
    tuned step); σ only enters through the M-step. ``scale`` multiplies ζ_t.
    """
    residual = y - blur(x0_01, kernel)
    loss = residual.flatten(1).norm(dim=1).sum()   # one norm per particle
    (grad,) = torch.autograd.grad(loss, x_t)
    return -scale * math.sqrt(schedule.alphas_cumprod[i]) * grad


GUIDANCE = {"pigdm": pigdm_guidance, "dps": dps_guidance}
