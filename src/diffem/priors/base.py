"""The common prior interface: every image prior is an ε-prediction network wrapped once.

A ``Prior`` holds ``network(x_t, t)`` with guided-diffusion's signature (x_t in [-1, 1],
t = original timestep indices (B,) int64; output ε in the first C channels, possibly more
channels after them, e.g. the learned variance) and the base β schedule it was trained with.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from diffem.schedule import alphas_cumprod, linear_betas


class Prior(nn.Module):
    # Clip x̂0 to [-1, 1] (the authors' ``clip_denoised``); analytic priors switch it off.
    clip_denoised = True

    def __init__(self, network: nn.Module, channels: int = 3, betas: np.ndarray | None = None,
                 name: str = "prior", autocast_bf16: bool = False):
        super().__init__()
        self.network = network
        self.channels = channels
        self.betas = linear_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        self.name = name
        # bf16 autocast (+ channels_last) is ~2x faster on recent CPUs; fp32 stays the reference.
        self.autocast_bf16 = autocast_bf16
        # ᾱ of the full chain on the network's device, for Eq. 12 (samplers respace it: Schedule.for_prior)
        self.register_buffer("abar", torch.tensor(alphas_cumprod(self.betas), dtype=torch.float32), persistent=False)
        self.multiple = getattr(network, "multiple", 1)   # H and W must be multiples of this

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else self.abar.device

    def _autocast(self, x: torch.Tensor):
        if self.autocast_bf16:
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t): the first ``channels`` output channels, in float32."""
        with self._autocast(x_t):
            out = self.network(x_t, t)
        return out[:, : self.channels].float()

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, clip: bool | None = None) -> torch.Tensor:
        """Eq. 12 (Tweedie): x̂0 = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t, clipped to [-1, 1] as the authors do."""
        abar = self.abar[t].view(-1, 1, 1, 1)
        x0 = (x_t - (1 - abar).sqrt() * self.eps(x_t, t)) / abar.sqrt()
        return x0.clamp(-1, 1) if (self.clip_denoised if clip is None else clip) else x0

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """deepinv-style Gaussian denoiser D(x, σ) for x in [0,1] with noise std σ on [0,1].

        Maps σ to the timestep t with √((1−ᾱ_t)/ᾱ_t) = 2σ, scales the image by √ᾱ_t as the
        diffusion does, and returns x̂0 in [0,1].
        """
        ratio = ((1 - self.abar) / self.abar).sqrt()
        t = int(torch.argmin((ratio - 2 * sigma).abs()))
        abar = self.abar[t]
        x_t = abar.sqrt() * (2 * x - 1)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        return (self.x0(x_t, tt) + 1) / 2
