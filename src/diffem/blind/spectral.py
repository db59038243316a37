"""A kernel from the blurry image's spectrum (diffem's ``spectral`` estimator: a candidate for long blurs).

The gradients of a sharp natural image are nearly uncorrelated beyond a pixel or two, so the
autocorrelation of the *blurry* image's gradients is ≈ k ⋆ k, the kernel's own autocorrelation
(Goldstein & Fattal, "Blur-kernel estimation from spectral irregularities", ECCV 2012, whose idea this
follows in a simpler form). That is evidence from the whole photo at once: no alternating
minimisation that a long, thin trajectory can collapse in to the no-blur solution at the coarse levels
of a pyramid. Recovering k from k ⋆ k is phase retrieval: Fienup's hybrid input–output iterations
(Applied Optics 1982) with the kernel's support and non-negativity as the object constraints, from
several random starts, the best fit kept. k and its flip k(−·) have the same autocorrelation, so the
photo pipeline scores both (``"spectral"`` and ``"spectral-flipped"`` candidates).

From an exact autocorrelation the retrieval is exact (tested); from a photo the estimate carries the
image's own structure (long straight edges, periodic texture), so the kernel is rough — a candidate
beside the alternating estimators, for the long trajectories they lose, not a replacement. Refining
it with the multiscale stage's ℓ0/NNLS alternation (from 15, 35 or 75 px levels; λ 6.4e-3, 1e-3,
4e-4) made it worse on the photo dev set.
"""
from __future__ import annotations

import torch

from diffem.blind.steps import clean_kernel, dx, dy

# phase retrieval (restarts, iterations, HIO's feedback β, seed) and the clean-up of multiscale.DEFAULTS
DEFAULTS = dict(restarts=8, hio_iters=300, er_iters=100, beta=0.9, seed=0, threshold=0.05, min_mass=0.1)


def gradient_autocorrelation(v: torch.Tensor, ksize: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """≈ k ⋆ k of grey image v (H, W): the autocorrelation of v's gradients (Hann-windowed, untrusted
    pixels' gradients zeroed), cropped to (2k−1)² around lag 0, its background (median) removed,
    clipped at 0 and normalised to sum 1 (as k ⋆ k does for a kernel of sum 1)."""
    v = v.double()
    H, W = v.shape
    window = torch.hann_window(H, periodic=False, dtype=v.dtype)[:, None] * \
        torch.hann_window(W, periodic=False, dtype=v.dtype)[None, :]
    if mask is not None:   # a gradient touching an untrusted pixel is not data
        m = mask.double()
        window = window * m * m.roll(-1, 0) * m.roll(-1, 1)
    power = 0
    for d in (dx, dy):
        g = d(v) * window
        g[-1, :], g[:, -1] = 0, 0   # the wrap-around differences
        power = power + torch.fft.rfft2(g).abs() ** 2
    ac = torch.fft.fftshift(torch.fft.irfft2(power, s=(H, W)))
    r = ksize - 1
    ac = ac[H // 2 - r:H // 2 + r + 1, W // 2 - r:W // 2 + r + 1]
    ac = (ac - ac.median()).clamp_min(0)
    return ac / ac.sum().clamp_min(1e-30)


def phase_retrieval(ac: torch.Tensor, ksize: int, restarts: int = 8, hio_iters: int = 300, er_iters: int = 100,
                    beta: float = 0.9, seed: int = 0) -> tuple[torch.Tensor, float]:
    """The non-negative (ksize, ksize) k whose autocorrelation best matches ``ac`` ((2k−1)², lag 0 at
    the centre): hybrid input–output then error reduction (Fienup 1982) on a (2k−1)² grid (where the
    autocorrelation does not alias), from ``restarts`` random starts run as one batch. Returns (k
    normalised to sum 1, relative Fourier magnitude error of the best start)."""
    n = 2 * ksize - 1
    lags = torch.arange(-(ksize - 1), ksize) % n
    grid = torch.zeros(n, n, dtype=torch.float64)
    grid[lags[:, None], lags[None, :]] = ac.double()
    magnitude = torch.fft.fft2(grid).real.clamp_min(0).sqrt()   # |K| = √(F(k ⋆ k))
    support = torch.zeros(n, n, dtype=torch.bool)
    support[:ksize, :ksize] = True
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(restarts, n, n, generator=gen, dtype=torch.float64) * support
    for it in range(hio_iters + er_iters):
        G = torch.fft.fft2(g)
        gp = torch.fft.ifft2(magnitude * torch.exp(1j * G.angle())).real
        fits = support & (gp >= 0)
        g = torch.where(fits, gp, g - beta * gp if it < hio_iters else torch.zeros_like(gp))
    error = (torch.fft.fft2(g).abs() - magnitude).flatten(1).norm(dim=1) / magnitude.norm()
    best = int(error.argmin())
    k = g[best, :ksize, :ksize].clamp_min(0)
    return k / k.sum().clamp_min(1e-30), float(error[best])


def estimate_kernel_spectral(v: torch.Tensor, kernel_size: int, mask: torch.Tensor | None = None,
                             flipped: bool = False, **settings) -> torch.Tensor:
    """The (kernel_size, kernel_size) kernel of grey image v (H, W): the phase-retrieved autocorrelation
    of v's gradients (``mask``: the pixels that are data), cleaned as the multiscale stage cleans its
    kernels (``steps.clean_kernel``); ``flipped``: its mirror image k(−·), which has the same
    autocorrelation (the choice between the two is the data's: score both). ``settings`` override
    ``DEFAULTS``."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown spectral setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **settings}
    ac = gradient_autocorrelation(v, kernel_size, mask)
    k, _ = phase_retrieval(ac, kernel_size, p["restarts"], p["hio_iters"], p["er_iters"], p["beta"], p["seed"])
    k = k.flip(-2, -1) if flipped else k
    return clean_kernel(k.float(), p["threshold"], p["min_mass"])
