"""Likelihood guidance ∇_{x_t} log p(y | x_t, k) for a blur: ΠGDM (Eq. 17) and DPS (Eq. 16).

Both work on the [0, 1] scale, like the measurement: x̂0_01 = (x̂0 + 1)/2. Each function takes the
graph-carrying x̂0_01 (a function of x_t), the measurement y and its ``physics`` (``diffem.physics.Blur``,
which owns the kernel, σ and the boundary), and returns the step to *add* to x'_{t−1} after the
unconditional DDPM step, as the authors do (reference notes §1.3–1.4).
"""
from __future__ import annotations

import math

import torch

from diffem.physics import Blur
from diffem.schedule import Schedule


def pigdm_r2(schedule: Schedule, i: int) -> float:
    """The authors' r_t² = s_t / (1 + s_t), with s_t the DDPM posterior variance σ̃²_t of the chain."""
    s = schedule.posterior_variance[i]
    return float(s / (1 + s))


def pigdm_guidance(x_t: torch.Tensor, x0_01: torch.Tensor, y: torch.Tensor, physics: Blur, schedule: Schedule,
                   i: int) -> torch.Tensor:
    """ΠGDM step (Eq. 17): ζ_t (∂x̂0/∂x_t)ᵀ Hᵀ(r²HHᵀ + σ²I)⁻¹(y − Hx̂0), one vector–Jacobian product
    through the network (the vector in closed form: ``Blur.pigdm_vector``).

    ζ_t = √ᾱ_t · r_t² / √(1 + s_t) (the authors' weighting); no guidance at the last step (r = 0).
    """
    r2 = pigdm_r2(schedule, i)
    if r2 == 0.0:
        return torch.zeros_like(x_t)
    v = physics.pigdm_vector(x0_01.detach(), y, r2)
    (grad,) = torch.autograd.grad(x0_01, x_t, grad_outputs=v)
    s = schedule.posterior_variance[i]
    zeta = math.sqrt(schedule.alphas_cumprod[i]) * r2 / math.sqrt(1 + s)
    return zeta * grad


def dps_guidance(x_t: torch.Tensor, x0_01: torch.Tensor, y: torch.Tensor, physics: Blur, schedule: Schedule,
                 i: int, scale: float = 1.0) -> torch.Tensor:
    """DPS step as the authors implement Eq. 16: −ζ_t ∇_{x_t} ‖y − k⊛x̂0‖₂ with ζ_t = √ᾱ_t.

    The norm is not squared and has no 1/σ² (the literal Eq. 16 diverges at small σ without a
    tuned step); σ only enters through the M-step. ``scale`` multiplies ζ_t. The residual is taken
    on the canvas with y imputed (zero where unobserved: only the observed pixels are fitted).
    """
    residual = physics.impute(y, x0_01.detach()) - physics.convolve(x0_01)
    loss = residual.flatten(1).norm(dim=1).sum()   # one norm per particle
    (grad,) = torch.autograd.grad(loss, x_t)
    return -scale * math.sqrt(schedule.alphas_cumprod[i]) * grad
