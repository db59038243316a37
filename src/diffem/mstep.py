"""The M-step: kernel estimation by half-quadratic splitting (Eq. 21–25).

Given particles x^i (n, C, H, W) on [0, 1] and the measurement y, HQS alternates
  Z_{j+1} = argmin_Z 1/(2σ²n) Σ_i ‖Z x^i − y‖² + β/2 ‖Z − K_j‖²        (Eq. 22, closed form Eq. 24)
  K_{j+1} = argmin_K λ Φ(K) + β/2 ‖K − Z_{j+1}‖²  (= D_{√(λ/β)}(Z) for PnP)   (Eq. 23, 25)
with a projection onto {k ≥ 0, Σk = 1} after each step.

For ΠGDM the particles are Gaussian, x ~ N(x̂0^i, r_t² I) (Eq. 33): the expectation adds
n·N·r_t² per channel to the Fourier denominator (N = H·W), a Tikhonov damping that fades as t → 0.
The samplers leave it out by default, as the authors' code does (``KernelMStep.pigdm_damping``): while
x̂0 is still uninformative it pulls the kernel to the minimum-energy kernel on the simplex, the uniform
one, and Fast EM never recovers from that start (measured on real camera shake).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from diffem.physics import Blur, crop_kernel, kernel_to_otf, project_simplex, project_simplex_euclidean, recenter

KernelDenoiser = Callable[[torch.Tensor, float], torch.Tensor]
REGULARISERS = ("pnp", "l2", "l1", "none")


def data_terms(x: torch.Tensor, y: torch.Tensor, r2: float = 0.0, channel_mode: str = "joint"):
    """The parts of Eq. 24 that do not change across HQS iterations (float32 FFTs: the
    kernel MSE matches float64 to 1e-9 on the tests, at half the cost):
    numerator Σ_i conj(X_i)·Y and denominator Σ_i |X_i|² (+ n·N·r² for ΠGDM, Eq. 33).

    ``channel_mode="joint"`` also sums over the colour channels: one least-squares system for the
    kernel shared by R, G, B. ``"average"`` keeps one system per channel (the authors average the
    per-channel solutions).
    """
    if channel_mode not in ("joint", "average"):
        raise ValueError(f"channel_mode: expected 'joint' or 'average', got {channel_mode!r}")
    X = torch.fft.rfft2(x.to(torch.float32))
    Y = torch.fft.rfft2(y.to(torch.float32))
    n, N = x.shape[0], x.shape[-2] * x.shape[-1]
    num = (X.conj() * Y).sum(0)                       # (C, H, W//2+1)
    den = (X.real**2 + X.imag**2).sum(0) + n * N * r2
    if channel_mode == "joint":
        num, den = num.sum(0, keepdim=True), den.sum(0, keepdim=True)
    return num, den


def hqs_data_step(num: torch.Tensor, den: torch.Tensor, shape: tuple[int, int], k_prev: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """Eq. 24: Z = F⁻¹[(Σ conj(X)Y + α F(K_j)) / (Σ|X|² + α)], α = nβσ², cropped to the kernel support
    and projected. Per-channel solutions (``average`` mode) are averaged."""
    Kp = kernel_to_otf(k_prev.to(torch.float32), shape)
    z = torch.fft.irfft2((num + alpha * Kp) / (den + alpha), s=shape).mean(0)
    return project_simplex(crop_kernel(z, k_prev.shape[-1]))


def prior_step(z: torch.Tensor, regulariser: str, lam: float, beta: float,
               denoiser: KernelDenoiser | None = None) -> torch.Tensor:
    """Eq. 23 / 25: the proximal step of λΦ with weight β, then projection."""
    if regulariser == "none" or lam == 0:
        return z
    if regulariser == "l2":      # Φ = ‖K‖²: exact prox on the simplex (clip-and-rescale would undo the shrink)
        return project_simplex_euclidean(beta * z / (2 * lam + beta))
    if regulariser == "l1":      # Φ = ‖K‖₁ on k ≥ 0: soft threshold
        return project_simplex((z - lam / beta).clamp_min(0))
    if regulariser == "pnp":     # Eq. 25: K = D_{√(λ/β)}(Z)
        if denoiser is None:
            raise ValueError("denoiser: the 'pnp' regulariser needs a kernel denoiser D(k, sigma)")
        with torch.no_grad():
            out = denoiser(z[None, None], (lam / beta) ** 0.5)[0, 0]
        return project_simplex(out)
    raise ValueError(f"regulariser: expected one of {REGULARISERS}, got {regulariser!r}")


class SupportDataStep:
    """Eq. 24 restricted to the kernel support, for all HQS iterations at the cost of two FFTs.

    Z_crop = crop(F⁻¹[num/(den+α)]) + α · crop(g ⊛ K_j) with g = F⁻¹[1/(den+α)]: the first term does
    not depend on K_j, and the second only needs g on the (2k−1)² window around the origin, so
    each iteration is a small direct convolution instead of two H×W FFTs. Exact (same circular
    model); used when 2k−1 fits in the image.
    """

    def __init__(self, num: torch.Tensor, den: torch.Tensor, shape: tuple[int, int], ksize: int, alpha: float):
        self.ksize, self.alpha = ksize, alpha
        self.a = crop_kernel(torch.fft.irfft2(num / (den + alpha), s=shape), ksize)          # (C', k, k)
        self.g = crop_kernel(torch.fft.irfft2(1 / (den + alpha), s=shape), 2 * ksize - 1)[:, None]

    @staticmethod
    def fits(shape, ksize: int) -> bool:
        return 2 * ksize - 1 <= min(shape)

    def __call__(self, k_prev: torch.Tensor) -> torch.Tensor:
        # (g ⊛ k)(p) = Σ_q k(q) g(p − q): a correlation of g with the flipped kernel
        w = torch.flip(k_prev.to(self.g.dtype), dims=(-2, -1))[None, None]
        gk = F.conv2d(self.g, w)[:, 0]                                                      # (C', k, k)
        return project_simplex((self.a + self.alpha * gk).mean(0))


@torch.no_grad()
def estimate_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float, k_init: torch.Tensor, *, n_iter: int = 10,
                    lam: float = 1.0, beta: float = 1e5, regulariser: str = "pnp",
                    denoiser: KernelDenoiser | None = None, r2: float = 0.0, channel_mode: str = "joint",
                    n_weight: bool = True) -> torch.Tensor:
    """HQS kernel estimate (Eq. 21–25). x: (n,C,H,W) particles on [0,1]; y: (C,H,W) or (1,C,H,W);
    k_init: (k,k) warm start. Returns the (k,k) kernel (≥ 0, sum 1)."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser: expected one of {REGULARISERS}, got {regulariser!r}")
    num, den = data_terms(x, y, r2, channel_mode)
    alpha = (x.shape[0] if n_weight else 1) * beta * max(sigma, 1e-8) ** 2   # nβσ² (Eq. 24) or βσ²
    shape, ksize = tuple(x.shape[-2:]), k_init.shape[-1]
    if SupportDataStep.fits(shape, ksize):
        data_step = SupportDataStep(num, den, shape, ksize, alpha)
    else:
        data_step = lambda k_prev: hqs_data_step(num, den, shape, k_prev, alpha)  # noqa: E731
    k = k_init
    for _ in range(n_iter):
        z = data_step(k)                                                       # Eq. 22 / 24
        k = prior_step(z.to(k_init.dtype), regulariser, lam, beta, denoiser)  # Eq. 23 / 25
    return k.to(k_init.dtype)


# estimate_kernel's keywords and their defaults: the one place they are set
HQS_DEFAULTS = {name: p.default for name, p in inspect.signature(estimate_kernel).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name != "r2"}


@dataclass(frozen=True)
class KernelMStep:
    """The M-step hook of the samplers (Eq. 21–25): ``estimate_kernel`` warm-started from the current
    kernel, then (``recenter``) centre-of-mass re-centring, as the authors do after each M-step.

    ``hqs``: keywords for ``estimate_kernel`` (n_iter, lam, beta, regulariser, denoiser, channel_mode,
    n_weight); the others keep its defaults (``settings`` lists them all). ``every``/``start`` choose
    when it runs inside one diffusion: at sampler iterations start, start+every, … (iteration 0 is
    the first, noisiest step).
    """

    hqs: dict = field(default_factory=dict)
    pigdm_damping: bool = False     # Eq. 33's n·N·r_t² term: off, as in the authors' code (module docstring)
    recenter: bool = True
    every: int = 1
    start: int = 0

    def __post_init__(self):
        unknown = set(self.hqs) - set(HQS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown M-step option(s): {', '.join(sorted(unknown))} (known: {', '.join(HQS_DEFAULTS)})")

    @property
    def settings(self) -> dict:
        return {**HQS_DEFAULTS, **self.hqs}

    def active(self, iteration: int) -> bool:
        return iteration >= self.start and (iteration - self.start) % self.every == 0

    def __call__(self, physics: Blur, y: torch.Tensor, x: torch.Tensor, r2: float = 0.0) -> torch.Tensor:
        """The kernel fitting particles x (n, C, H', W' on the physics' canvas) to y; r2: ΠGDM's r_t²."""
        k = estimate_kernel(x, physics.impute(y, x), physics.sigma, physics.kernel,
                            r2=r2 if self.pigdm_damping else 0.0, **self.hqs)
        return recenter(k) if self.recenter else k
