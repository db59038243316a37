"""Image denoisers with one interface, ``denoiser(x, sigma) -> x̂``.

x: (B, C, H, W) on [0, 1] (C = 1 or 3); sigma: the noise std on that same [0, 1] scale (a float).
The output has x's shape. Two implementations:

* ``"ffdnet"``: FFDNet with the public KAIR colour weights (``denoisers/ffdnet.py``, trained for
  σ ≤ 75/255; a larger σ is clamped to that). The strongest denoiser diffem has.
* ``"prior"``: a diffusion prior's Tweedie x̂0 (Eq. 12) at the matching noise level (``Prior.denoise``).

Both are used by the PnP-HQS restorer (``diffem.pnp``) and can be passed wherever a denoiser is asked for.
"""
from __future__ import annotations

from typing import Protocol

import torch

DENOISERS = ("ffdnet", "prior")


class Denoiser(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor: ...


def _as_rgb(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, float]:
    """Grey images go through an RGB network as three equal channels and come back averaged.
    Returns the image and the factor for σ: an RGB denoiser expects independent noise per channel,
    i.e. luminance noise σ/√3, while three copies of one grey channel carry luminance noise σ, so it is
    told √3·σ (measured best of 1, 1.5, √3, 2 on CBSD68 grey crops at σ 5–25/255)."""
    if x.shape[1] == channels:
        return x, 1.0
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1), channels ** 0.5
    raise ValueError(f"x: the denoiser takes 1 or {channels} channels, got {x.shape[1]}")


class FFDNetDenoiser:
    """FFDNet as ``denoiser(x, sigma)``; σ is clamped to the training range [0, 75/255].
    ``bf16_from``: run in bf16 autocast at σ ≥ this (None: always fp32)."""

    name = "ffdnet"

    def __init__(self, net, bf16_from: float | None = None):
        from diffem.denoisers.ffdnet import SIGMA_MAX

        self.net, self.sigma_max, self.bf16_from = net, SIGMA_MAX, bf16_from
        self.channels = (net.model[0].in_channels - 1) // 4

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x3, factor = _as_rgb(x, self.channels)
        s = min(max(float(sigma) * factor, 0.0), self.sigma_max)
        bf16 = self.bf16_from is not None and float(sigma) >= self.bf16_from
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(x3, torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device))
        out = out.to(x.dtype)
        return out.mean(1, keepdim=True) if factor != 1 else out


class PriorDenoiser:
    """A diffusion prior's x̂0 (Tweedie, Eq. 12) as ``denoiser(x, sigma)``."""

    name = "prior"

    def __init__(self, prior):
        self.prior = prior

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x3, factor = _as_rgb(x, self.prior.channels)
        out = self.prior.denoise(x3, float(sigma) * factor)
        return out.mean(1, keepdim=True) if factor != 1 else out


def load_denoiser(name="ffdnet", device="cpu", prior="default") -> Denoiser:
    """``"ffdnet"``, ``"prior"`` (the Tweedie x̂0 of ``prior``: a name, a path or a loaded Prior),
    or an object that already is a denoiser (returned as is)."""
    if callable(name) and not isinstance(name, str):
        return name
    if name == "ffdnet":
        from diffem.denoisers.ffdnet import load_ffdnet

        return FFDNetDenoiser(load_ffdnet(device=device))
    if name == "prior":
        from diffem.priors import load_prior

        p = load_prior(prior, device=device).eval().requires_grad_(False)
        return PriorDenoiser(p)
    raise ValueError(f"denoiser: expected one of {DENOISERS} or a callable denoiser(x, sigma), got {name!r}")


__all__ = ["DENOISERS", "Denoiser", "FFDNetDenoiser", "PriorDenoiser", "load_denoiser"]
