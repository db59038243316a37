"""Samplers, each one plain function with the same shape and no side effects:
``sampler(prior, y, physics, schedule, *, n, seed, callback, disable, ...) -> (samples, kernel)``.

* ``posterior_sample`` — Algorithm 1: non-blind DPS / ΠGDM posterior sampling with a known kernel.
* ``fast_diffusion_em`` — Algorithm 2: the same sampler with an M-step hook that re-estimates the
  kernel from x̂0 at each step, *before* the guidance. Nothing else differs.
* ``diffusion_em`` — Algorithm A.1: an outer EM loop, each E-step a full non-blind run, then an M-step.

y is the (1, C, h, w) measurement on [0, 1] and ``physics`` its ``Blur`` (``Blur.for_measurement``);
the samples (n, C, H, W) are on [0, 1] and on the physics' canvas (``physics.crop`` gives y's box).
The caller's physics is never modified: the final kernel is returned. Particle i's noise depends on
(seed, i) only (``diffem.rng.ParticleNoise``), so with a known kernel the first particles do not
change when more are asked for.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import trange

from diffem.guidance import dps_guidance, pigdm_guidance, pigdm_r2
from diffem.mstep import KernelMStep
from diffem.physics import Blur
from diffem.priors.base import Prior
from diffem.rng import ParticleNoise
from diffem.schedule import Schedule

GUIDANCES = ("pigdm", "dps")


def posterior_sample(prior: Prior, y: torch.Tensor, physics: Blur, schedule: Schedule, *, guidance: str = "pigdm",
                     n: int = 1, seed: int = 0, noise: ParticleNoise | None = None, mstep: KernelMStep | None = None,
                     callback: Callable[[dict], None] | None = None, disable: bool = False, dps_scale: float = 1.0,
                     desc: str = "sampling") -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (and, with ``mstep``, Algorithm 2). Returns (n, C, H, W) samples and the kernel.

    ``noise``: the particles' noise streams (default ``ParticleNoise(seed, n)``; ``diffusion_em``
    passes its own so that successive E-steps continue them)."""
    if guidance not in GUIDANCES:
        raise ValueError(f"guidance: expected one of {GUIDANCES}, got {guidance!r}")
    noise = ParticleNoise(seed, n) if noise is None else noise
    shape = (y.shape[1],) + (physics.canvas_shape or tuple(y.shape[-2:]))
    x = noise.randn(shape, like=y)
    clip = prior.clip_denoised
    for it in trange(len(schedule), desc=desc, disable=disable, leave=False):
        i = len(schedule) - 1 - it
        t = schedule.t(i, len(noise), device=y.device)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = prior.x0(x, t)                                        # Eq. 12
            x0_01 = (x0 + 1) / 2
            x0_01 = x0_01.clamp(0, 1) if clip else x0_01
            if mstep is not None and mstep.active(it):                 # Alg. 2: H_{t−1} = M-step(y, x̂0, σ)
                r2 = pigdm_r2(schedule, i) if guidance == "pigdm" else 0.0
                physics = physics.with_kernel(mstep(physics, y, x0_01.detach(), r2=r2))
            if guidance == "dps":                                      # Eq. 16
                g = dps_guidance(x, x0_01, y, physics, schedule, i, dps_scale)
            else:                                                      # Eq. 17
                g = pigdm_guidance(x, x0_01, y, physics, schedule, i)
        z = noise.randn(shape, like=x) if i > 0 else None
        x = schedule.ddpm_step(x.detach(), x0.detach(), i, z) + g     # Eq. 14–15 (guidance added after)
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
                 n_em: int = 10, guidance: str = "pigdm", n: int = 1, seed: int = 0,
                 callback: Callable[[dict], None] | None = None, disable: bool = False,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm A.1: L = ``n_em`` EM iterations; E-step = a full non-blind run with n particles and
    the current kernel, M-step = HQS on the final samples (no r_t damping: they are samples)."""
    noise = ParticleNoise(seed, n)
    samples = None
    for it in trange(n_em, desc="diffusion EM", disable=disable, leave=False):
        samples, _ = posterior_sample(prior, y, physics, schedule, guidance=guidance, noise=noise, disable=disable,
                                      desc=f"E-step {it + 1}/{n_em}", **kwargs)
        physics = physics.with_kernel(mstep(physics, y, samples))
        if callback is not None:
            callback({"em_iteration": it, "samples": samples, "kernel": physics.kernel})
    return samples, physics.kernel
