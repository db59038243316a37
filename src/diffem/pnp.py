"""Non-blind Plug-&-Play restoration: half-quadratic splitting around a denoiser (DPIR-style).

For y = A x + n with noise std σ, HQS alternates, for k = 1 … K with a decreasing noise level σ_k,

    z_k = argmin_x ‖y − A x‖² + ρ_k ‖x − x_{k−1}‖²,   ρ_k = λ σ² / σ_k²      (data step: ``Blur.prox``)
    x_k = D(z_k, σ_k)                                                        (prior step: a denoiser)

σ_k is geometric from ``sigma_start`` (49/255) down to σ; λ = 0.23 and K = 8 (Zhang et al., DPIR,
TPAMI 2021). The physics owns the boundary: circular (closed form in Fourier) or valid (x lives on a
canvas larger than y by ⌊k/2⌋; conjugate-gradient data step, ``Blur.prox``).

The first data step decides the basin: its ρ₁ = λσ²/σ₁² is tiny (a near-deconvolution), it starts from y
padded by replication, and the strong denoiser after it cannot undo its error, so it gets
``FIRST_CG_ITERS`` CG iterations; the later ones (larger ρ, warm-started) need only ``CG_ITERS``. With
the true kernel on 384² crops of four photo dev-set pairs (σ ≈ 1/255, 31–75 px): +0.36 to +2.13 dB over 8
iterations everywhere; 32 in the later steps changed nothing (docs/benchmarks/image-stage.md, session 7).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from diffem.physics import CG_ITERS

SIGMA_START = 49 / 255
LAMBDA = 0.23
ITERATIONS = 8
FIRST_CG_ITERS = 64   # CG iterations of the first data step (the others: physics.CG_ITERS; see above)
# … or fewer, once its preconditioned residual is this far below its start: at σ ≈ 1/255 64 iterations reach
# 1.0–2.8e-4 on the 20 dev crops (so they all run), at σ = 5/255 (ρ₁ 25× larger) 1e-4 comes after 36–44
FIRST_CG_TOL = 1e-4


def pnp_schedule(sigma: float, iters: int = ITERATIONS, sigma_start: float = SIGMA_START,
                 lam: float = LAMBDA) -> list[tuple[float, float]]:
    """[(σ_k, ρ_k)]: σ_k geometric from max(sigma_start, σ) to σ, ρ_k = λ σ² / σ_k²."""
    sigmas = np.geomspace(max(sigma_start, sigma), sigma, iters) if iters > 1 else np.array([sigma])
    return [(float(s), lam * sigma ** 2 / float(s) ** 2) for s in sigmas]


@torch.no_grad()
def pnp_hqs(y: torch.Tensor, physics, denoiser, *, iters: int = ITERATIONS, sigma_start: float = SIGMA_START,
            lam: float = LAMBDA, x_init: torch.Tensor | None = None, progress: bool = False,
            cg_iters: int = CG_ITERS, first_cg_iters: int = FIRST_CG_ITERS,
            first_cg_tol: float | None = FIRST_CG_TOL) -> torch.Tensor:
    """PnP-HQS restoration of (1,C,h,w) y under ``physics`` (a ``Blur``; its σ is the noise level).
    Returns x on the physics' canvas ((1,C,h,w) for circular; ``physics.crop(x)`` gives y's box)."""
    x = physics.canvas(y) if x_init is None else x_init
    schedule = pnp_schedule(physics.sigma, iters, sigma_start, lam)
    for i, (sigma_k, rho) in enumerate(tqdm(schedule, desc="PnP-HQS", disable=not progress, leave=False)):
        first = i == 0
        x = denoiser(physics.prox(x, y, rho, cg_iters=first_cg_iters if first else cg_iters,
                                  cg_tol=first_cg_tol if first else None), sigma_k)
    return x


__all__ = ["FIRST_CG_ITERS", "FIRST_CG_TOL", "pnp_hqs", "pnp_schedule"]
