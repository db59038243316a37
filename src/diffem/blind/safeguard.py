"""A data-fit check of an estimated kernel, and the conservative fallback.

A correct kernel lets a regularised restoration x̂ explain the measurement down to the noise:
r = mean((y − A x̂)²)/σ² ≈ 1 (slightly below: the denoiser keeps a little of the noise). A kernel
that is too large or misshapen cannot: y holds detail at frequencies where k̂ has (near) zeros, and
the restoration either misses it or rings, so r rises above 1. The no-blur hypothesis (k = δ, x̂ the
denoised y) is the conservative alternative; its ratio r₀ is reported beside r.

The threshold was calibrated on the tuning split (docs/benchmarks/kernel-estimation.md): estimated,
true, dilated, rotated and foreign kernels, with the restored image's PSNR change as the truth.
"""
from __future__ import annotations

import torch

RESIDUAL_LIMIT = 1.1     # r above this: the kernel does not explain y (calibrated on the tuning split)


def residual_ratio(y: torch.Tensor, x: torch.Tensor, physics) -> float:
    """mean((y − A x)²)/σ² over the observed pixels; x on the physics' canvas."""
    return float(((y - physics.A(x)) ** 2).mean()) / max(physics.sigma, 1e-8) ** 2


@torch.no_grad()
def check_kernel(y: torch.Tensor, x: torch.Tensor, physics, denoiser, limit: float = RESIDUAL_LIMIT) -> dict:
    """Is ``physics.kernel`` trusted, given the restoration x (on the canvas) of y? Returns the verdict,
    both residual ratios and the conservative image (y denoised: the no-blur hypothesis)."""
    r = residual_ratio(y, x, physics)
    no_blur = denoiser(y, physics.sigma).clamp(0, 1)
    r0 = float(((y - no_blur) ** 2).mean()) / max(physics.sigma, 1e-8) ** 2
    return {"kernel_trusted": bool(r <= limit), "residual_ratio": r, "residual_ratio_no_blur": r0,
            "residual_limit": limit, "fallback_image": no_blur}
