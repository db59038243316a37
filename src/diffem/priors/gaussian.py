"""An exact analytic prior: a stationary Gaussian image model with a natural-image-like spectrum.

x ~ N(μ, C) on the [-1, 1] scale with C = F* diag(P) F (orthonormal DFT, channels independent)
and P(f) = A / (|f|² + f0²), f in cycles/pixel — the 1/|f|² law of natural images.

Because everything is diagonal in Fourier, E[x0 | x_t] and therefore ε(x_t, t) are exact, and for
a circular blur the posterior p(x | y, k) is Gaussian and known (``posterior``). Every sampler can
thus be checked against a closed-form truth in seconds.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffem.physics import kernel_to_otf
from diffem.priors.base import Prior

# Chosen so that the pixel std is ≈ 0.5 on [-1, 1] (0.25 on [0, 1], typical of photos) at 256×256,
# with the spectrum flattening below f0 = 1/50 cycles/pixel.
DEFAULT_F0 = 0.02
DEFAULT_PIXEL_VAR = 0.25


def _freq2(H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
    fr = torch.fft.fftfreq(H, device=device, dtype=dtype)
    fc = torch.fft.rfftfreq(W, device=device, dtype=dtype)
    return fr[:, None] ** 2 + fc[None, :] ** 2


class GaussianSpectrumNet(nn.Module):
    """The exact ε-prediction network of the Gaussian prior (guided-diffusion signature)."""

    def __init__(self, abar: torch.Tensor, f0: float = DEFAULT_F0, pixel_var: float = DEFAULT_PIXEL_VAR,
                 mean: float = 0.0):
        super().__init__()
        self.f0, self.mean = f0, mean
        # Amplitude A from the pixel variance at a 256×256 reference: var = mean_f P(f).
        self.amplitude = pixel_var / float((1.0 / (_freq2(256, 256, dtype=torch.float64) + f0**2)).mean())
        self.register_buffer("abar", abar.clone(), persistent=False)

    def power(self, H: int, W: int, device=None) -> torch.Tensor:
        """P on the rfft2 grid of an H×W image (per-pixel variance density)."""
        return self.amplitude / (_freq2(H, W, device=device) + self.f0**2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t].view(-1, 1, 1, 1).to(x_t.dtype)
        P = self.power(*x_t.shape[-2:], device=x_t.device)
        # E[x0 | x_t] per frequency: μ + √ᾱ P / (ᾱ P + 1 − ᾱ) · (X_t − √ᾱ μ)
        Xt = torch.fft.rfft2(x_t - abar.sqrt() * self.mean, norm="ortho")
        x0 = self.mean + torch.fft.irfft2(abar.sqrt() * P / (abar * P + 1 - abar) * Xt, s=x_t.shape[-2:],
                                          norm="ortho")
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


class GaussianPrior(Prior):
    """``load_prior("gaussian")``. No clipping of x̂0 (the model is not bounded to [-1, 1])."""

    clip_denoised = False

    def __init__(self, f0: float = DEFAULT_F0, pixel_var: float = DEFAULT_PIXEL_VAR, mean: float = 0.0,
                 channels: int = 3):
        super().__init__(nn.Identity(), channels=channels, name="gaussian")
        self.network = GaussianSpectrumNet(self.abar, f0=f0, pixel_var=pixel_var, mean=mean)

    def sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact prior samples, returned on the [0, 1] scale (B, C, H, W)."""
        w = torch.randn(shape, generator=generator)
        P = self.network.power(*shape[-2:])
        x = self.network.mean + torch.fft.irfft2(P.sqrt() * torch.fft.rfft2(w, norm="ortho"), s=shape[-2:],
                                                 norm="ortho")
        return (x + 1) / 2

    def posterior(self, y: torch.Tensor, kernel: torch.Tensor, sigma: float):
        """Closed-form p(x | y, k) for y = k ⊛ x + n on [0, 1] (circular blur, kernel sum 1).

        On [-1, 1] the noise std is 2σ. Returns (mean on [0, 1], per-frequency posterior variance
        on [0, 1] in the orthonormal-DFT basis, rfft2 layout).
        """
        H, W = y.shape[-2:]
        P = self.network.power(H, W).to(y.device).double()
        K = kernel_to_otf(kernel.double().to(y.device), (H, W))
        mu = self.network.mean
        Y = torch.fft.rfft2(2 * y.double() - 1 - mu, norm="ortho")  # k ⊛ μ = μ since Σk = 1
        s2 = (2 * sigma) ** 2
        X = P * K.conj() * Y / (K.abs() ** 2 * P + s2)
        mean = (mu + torch.fft.irfft2(X, s=(H, W), norm="ortho") + 1) / 2
        var = P * s2 / (K.abs() ** 2 * P + s2) / 4
        return mean.to(y.dtype), var

    def extra_repr(self) -> str:
        n = self.network
        return f"f0={n.f0}, amplitude={n.amplitude:.3g}, mean={n.mean}, pixel std≈{math.sqrt(DEFAULT_PIXEL_VAR):.2f}"
