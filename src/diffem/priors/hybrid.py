"""A hybrid diffusion prior: x̂0 from FFDNet where the noise level lies inside its training range,
from the diffusion UNet above it.

At step t the diffusion state is x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε on [-1, 1], i.e. x_t/√ᾱ_t is x0 plus
Gaussian noise of std √((1−ᾱ_t)/ᾱ_t) on [-1, 1], half that on [0, 1]. Where that std is ≤ 75/255
FFDNet denoises it (x̂0 = 2·FFDNet((x_t/√ᾱ_t + 1)/2, σ_t) − 1), and ε follows from Eq. 12 read
backwards, ε = (x_t − √ᾱ_t x̂0)/√(1−ᾱ_t), so every sampler and the guidance's vector–Jacobian
product (through FFDNet) work unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from diffem.denoisers.ffdnet import SIGMA_MAX
from diffem.priors.base import Prior


class HybridNet(nn.Module):
    """ε(x_t, t): FFDNet's ε where σ_t ≤ sigma_max, the UNet's elsewhere (one choice per batch)."""

    def __init__(self, unet_prior: Prior, ffdnet: nn.Module, sigma_max: float = SIGMA_MAX):
        super().__init__()
        self.unet_prior, self.ffdnet, self.sigma_max = unet_prior, ffdnet, sigma_max

    def sigma01(self, t: torch.Tensor) -> torch.Tensor:
        abar = self.unet_prior.abar[t]
        return ((1 - abar) / abar).sqrt() / 2          # noise std of x_t/√ᾱ on the [0, 1] scale

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma01(t)
        if float(s.max()) > self.sigma_max:
            return self.unet_prior.eps(x_t, t)
        abar = self.unet_prior.abar[t].view(-1, 1, 1, 1)
        noisy01 = (x_t / abar.sqrt() + 1) / 2
        x0 = 2 * self.ffdnet(noisy01, s) - 1
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def hybrid_prior(unet_prior: Prior, ffdnet: nn.Module | None = None, sigma_max: float = SIGMA_MAX) -> Prior:
    """Wrap a loaded RGB prior (e.g. ``load_prior("default")``) with FFDNet for the low-noise steps."""
    if unet_prior.channels != 3:
        raise ValueError(f"prior: the hybrid prior needs an RGB prior (FFDNet is colour), got {unet_prior.channels} channels")
    if ffdnet is None:
        from diffem.denoisers.ffdnet import load_ffdnet

        ffdnet = load_ffdnet(device=unet_prior.device)
    p = Prior(HybridNet(unet_prior, ffdnet, sigma_max), channels=3, betas=unet_prior.betas,
              name=f"hybrid({getattr(unet_prior, 'name', 'prior')}+ffdnet)")
    p.multiple = max(getattr(unet_prior, "multiple", 1), 2)
    return p.to(unet_prior.device)
