"""Samplers, each one plain function with the same shape:
``sampler(prior, y, physics, schedule, *, n, generator, callback, disable, ...) -> (samples, kernel)``.

* ``posterior_sample`` — Algorithm 1: non-blind DPS / ΠGDM posterior sampling with a known kernel.
* ``fast_diffusion_em`` — Algorithm 2: the same sampler with an M-step hook that re-estimates the
  kernel from x̂0 at each step, *before* the guidance. Nothing else differs.
* ``diffusion_em`` — Algorithm A.1: an outer EM loop, each E-step a full non-blind run, then an M-step.

Samples are returned on [0, 1]; ``physics.kernel`` holds the (final) kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import trange

from diffem.guidance import GUIDANCE, dps_guidance, pigdm_r2
from diffem.mstep import KernelDenoiser, estimate_kernel
from diffem.physics import Blur, recenter
from diffem.priors.base import Prior
from diffem.schedule import Schedule


@dataclass
class KernelMStep:
    """The M-step hook (Eq. 21–25): HQS from the previous kernel, optional re-centring.

    ``every``/``start`` choose when it runs inside one diffusion: at sampler iterations
    start, start+every, … (iteration 0 is the first, noisiest step).
    """

    n_iter: int = 10
    lam: float = 1.0
    beta: float = 1e5
    regulariser: str = "pnp"
    denoiser: KernelDenoiser | None = None
    pigdm_damping: bool = True      # Eq. 33's n·N·r_t² term (absent from the authors' code)
    channel_mode: str = "joint"
    n_weight: bool = True           # nβσ² (Eq. 24) rather than the authors' βσ²
    recenter: bool = True           # centre-of-mass re-centring after each M-step (authors' code)
    every: int = 1
    start: int = 0

    def active(self, iteration: int) -> bool:
        return iteration >= self.start and (iteration - self.start) % self.every == 0

    def __call__(self, x0_01: torch.Tensor, y: torch.Tensor, sigma: float, k_prev: torch.Tensor,
                 r2: float = 0.0) -> torch.Tensor:
        k = estimate_kernel(x0_01, y, sigma, k_prev, n_iter=self.n_iter, lam=self.lam, beta=self.beta,
                            regulariser=self.regulariser, denoiser=self.denoiser,
                            r2=r2 if self.pigdm_damping else 0.0, channel_mode=self.channel_mode,
                            n_weight=self.n_weight)
        return recenter(k) if self.recenter else k


def _noise(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the CPU so that a seed gives the same noise on every device.
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def posterior_sample(prior: Prior, y: torch.Tensor, physics: Blur, schedule: Schedule, *, guidance: str = "pigdm",
                     n: int = 1, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                     mstep: KernelMStep | None = None, callback: Callable[[dict], None] | None = None,
                     disable: bool = False, dps_scale: float = 1.0,
                     desc: str = "sampling") -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (and, with ``mstep``, Algorithm 2). y: (1,C,H,W) on [0,1]; returns (n,C,H,W) samples."""
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance: expected one of {tuple(GUIDANCE)}, got {guidance!r}")
    y = y if y.dim() == 4 else y[None]
    x = _noise((n,) + tuple(y.shape[1:]), generator, y) if x_T is None else x_T.clone()
    clip = prior.clip_denoised
    for it in trange(len(schedule), desc=desc, disable=disable, leave=False):
        i = len(schedule) - 1 - it
        t = schedule.t(i, n, device=y.device)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = prior.x0(x, t)                                        # Eq. 12
            x0_01 = (x0 + 1) / 2
            x0_01 = x0_01.clamp(0, 1) if clip else x0_01
            r2 = pigdm_r2(schedule, i) if guidance == "pigdm" else 0.0
            if mstep is not None and mstep.active(it):                 # Alg. 2: H_{t−1} = M-step(y, x̂0, σ)
                y_k = physics.impute(y, x0_01.detach())                # (y itself unless a boundary mask)
                physics.update(kernel=mstep(x0_01.detach(), y_k, physics.sigma, physics.kernel, r2=r2))
            y_k = physics.impute(y, x0_01.detach())
            if guidance == "dps":                                      # Eq. 16
                g = dps_guidance(x, x0_01, y_k, physics.kernel, physics.sigma, schedule, i, dps_scale)
            else:                                                      # Eq. 17
                g = GUIDANCE[guidance](x, x0_01, y_k, physics.kernel, physics.sigma, schedule, i)
        noise = _noise(x.shape, generator, x) if i > 0 else None
        x = schedule.ddpm_step(x.detach(), x0.detach(), i, noise) + g  # Eq. 14–15 (guidance added after)
        if callback is not None:
            callback({"i": i, "t": schedule.timesteps[i], "x": x, "x0": x0_01.detach(), "kernel": physics.kernel})
    out = (x.detach() + 1) / 2
    return (out.clamp(0, 1) if clip else out), physics.kernel


def fast_diffusion_em(prior: Prior, y: torch.Tensor, physics: Blur, schedule: Schedule, *, mstep: KernelMStep,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2: one diffusion run; the n particles share one kernel, warm-started step to step
    from ``physics.kernel`` (a centred delta by default)."""
    return posterior_sample(prior, y, physics, schedule, mstep=mstep, desc="fast EM", **kwargs)


def diffusion_em(prior: Prior, y: torch.Tensor, physics: Blur, schedule: Schedule, *, mstep: KernelMStep,
                 n_em: int = 10, guidance: str = "pigdm", n: int = 1, generator: torch.Generator | None = None,
                 callback: Callable[[dict], None] | None = None, disable: bool = False,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm A.1: L = ``n_em`` EM iterations; E-step = a full non-blind run with n particles and
    the current kernel, M-step = HQS on the final samples (no r_t damping: they are samples)."""
    y = y if y.dim() == 4 else y[None]
    samples = None
    for it in trange(n_em, desc="diffusion EM", disable=disable, leave=False):
        samples, _ = posterior_sample(prior, y, physics, schedule, guidance=guidance, n=n, generator=generator,
                                      disable=disable, desc=f"E-step {it + 1}/{n_em}", **kwargs)
        physics.update(kernel=mstep(samples, physics.impute(y, samples), physics.sigma, physics.kernel))
        if callback is not None:
            callback({"em_iteration": it, "samples": samples, "kernel": physics.kernel})
    return samples, physics.kernel
