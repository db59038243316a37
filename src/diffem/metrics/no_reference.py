"""Weight-free no-reference sharpness measures (for real blurry photos without ground truth).

* ``blur_strength`` — Crété-Roffet et al., "The blur effect: perception and estimation with a new
  no-reference perceptual blur metric", SPIE 2007. In [0, 1]; **higher = blurrier**. It compares the
  image's neighbour differences with those of a re-blurred copy (1×9 box filter): a sharp image loses
  much variation when re-blurred, an already blurry one does not.
* ``sharpness_index`` — Blanchet & Moisan, "An explicit sharpness index related to global phase
  coherence", ICASSP 2012, in the closed form of Leclaire & Moisan (JMIV 2015):
  SI(u) = −log10 Q((μ − TV(u)) / s), with Q the Gaussian upper tail and μ, s² the mean and variance of
  TV(u ⊛ W) for white Gaussian noise W (a random-phase version of u). **Higher = sharper.**
* ``gradient_sparsity`` — the normalised sparsity ℓ1/ℓ2 of the gradients (Krishnan, Tay & Fergus,
  CVPR 2011), divided by √n so that it lies in (0, 1]. **Lower = sharper**: blur spreads each edge over
  more pixels and ringing adds many small gradients, both raise it; the sharp image has the lowest.

Colour images are first averaged over channels. Both take (B,C,H,W) (or (C,H,W)/(H,W)) in [0,1] and
return one float64 value per batch element.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffem.metrics.full_reference import as_batch


def _gray(x: torch.Tensor) -> torch.Tensor:
    return as_batch(x, "x").double().mean(1)  # (B,H,W)


def blur_strength(x: torch.Tensor, h_size: int = 9) -> torch.Tensor:
    """Crété et al. 2007 blur metric per batch element; 0 = sharp, 1 = completely blurred."""
    g = _gray(x)[:, None]
    box = torch.full((1, 1, 1, h_size), 1.0 / h_size, dtype=g.dtype)
    out = []
    for dim, kern in ((-1, box), (-2, box.transpose(-1, -2))):
        pad = (h_size // 2, h_size // 2, 0, 0) if dim == -1 else (0, 0, h_size // 2, h_size // 2)
        b = F.conv2d(F.pad(g, pad, mode="replicate"), kern)
        d_f = torch.diff(g, dim=dim).abs()
        d_b = torch.diff(b, dim=dim).abs()
        v = (d_f - d_b).clamp_min(0)
        s_f = d_f.flatten(1).sum(1)
        s_v = v.flatten(1).sum(1)
        out.append((s_f - s_v) / s_f.clamp_min(1e-12))
    return torch.maximum(out[0], out[1])


def periodic_component(u: torch.Tensor) -> torch.Tensor:
    """Moisan's periodic + smooth decomposition: the periodic part of (…, H, W) images.

    Removing the smooth part kills the cross-shaped FFT artefacts caused by the image borders.
    """
    H, W = u.shape[-2:]
    v = torch.zeros_like(u)
    d_row = u[..., -1, :] - u[..., 0, :]   # jump across the top/bottom border
    d_col = u[..., :, -1] - u[..., :, 0]   # jump across the left/right border
    v[..., 0, :] += d_row
    v[..., -1, :] -= d_row
    v[..., :, 0] += d_col
    v[..., :, -1] -= d_col
    q = torch.arange(H, dtype=u.dtype)[:, None]
    r = torch.arange(W, dtype=u.dtype)[None, :]
    den = 2 * torch.cos(2 * math.pi * q / H) + 2 * torch.cos(2 * math.pi * r / W) - 4
    den[0, 0] = 1.0
    s_hat = torch.fft.fft2(v) / den
    s_hat[..., 0, 0] = 0
    return u - torch.fft.ifft2(s_hat).real


def _omega(t: torch.Tensor) -> torch.Tensor:
    # Cov(|X|,|Y|) = (2/π) σx σy ω(ρ) for a centred Gaussian pair with correlation ρ.
    t = t.clamp(-1.0, 1.0)
    return t * torch.asin(t) + torch.sqrt(1 - t * t) - 1


def sharpness_index(x: torch.Tensor) -> torch.Tensor:
    """Sharpness Index (Blanchet-Moisan, Leclaire-Moisan closed form) per batch element."""
    from scipy.special import log_ndtr

    u = _gray(x)
    u = periodic_component(u)
    u = u - u.mean(dim=(-2, -1), keepdim=True)
    H, W = u.shape[-2:]
    # circular forward differences
    dx = torch.roll(u, -1, dims=-1) - u
    dy = torch.roll(u, -1, dims=-2) - u
    tv = dx.abs().sum(dim=(-2, -1)) + dy.abs().sum(dim=(-2, -1))
    nx = dx.pow(2).sum(dim=(-2, -1)).sqrt()
    ny = dy.pow(2).sum(dim=(-2, -1)).sqrt()
    # E[TV(u ⊛ W)] with W white of variance 1/(HW): each derivative is N(0, ‖∂u‖²/(HW)).
    mu = math.sqrt(2 / math.pi) * math.sqrt(H * W) * (nx + ny)
    # Var = (2/π) Σ_{a,b} ‖∂a u‖‖∂b u‖ Σ_z ω(Γ_ab(z) / (‖∂a u‖‖∂b u‖)), Γ = circular cross-correlation.
    Dx, Dy = torch.fft.fft2(dx), torch.fft.fft2(dy)
    var = torch.zeros_like(mu)
    for A, na in ((Dx, nx), (Dy, ny)):
        for Bf, nb in ((Dx, nx), (Dy, ny)):
            gamma = torch.fft.ifft2(A.conj() * Bf).real
            norm = (na * nb).clamp_min(1e-300)[:, None, None]
            var = var + (na * nb) * _omega(gamma / norm).sum(dim=(-2, -1))
    var = (2 / math.pi) * var
    t = (mu - tv) / var.clamp_min(1e-300).sqrt()
    # −log10 of the upper Gaussian tail Q(t) = Φ(−t), computed in log space (t can be in the hundreds).
    si = -torch.from_numpy(log_ndtr(-t.numpy())) / math.log(10)
    flat = (nx + ny) == 0
    return torch.where(flat, torch.zeros_like(si), si)


def gradient_sparsity(x: torch.Tensor) -> torch.Tensor:
    """‖∇u‖₁ / (√n ‖∇u‖₂) of the grey image u (forward differences inside the image) per batch element."""
    u = _gray(x)
    g = torch.cat([(u[..., :, 1:] - u[..., :, :-1]).flatten(1), (u[..., 1:, :] - u[..., :-1, :]).flatten(1)], 1)
    return g.abs().sum(1) / (g.shape[1] ** 0.5 * g.norm(dim=1)).clamp_min(1e-300)


class BlurStrength:
    """deepinv-style callable ``BlurStrength()(x)`` -> (B,) (higher = blurrier)."""

    def __call__(self, x):
        return blur_strength(x)


class SharpnessIndex:
    """deepinv-style callable ``SharpnessIndex()(x)`` -> (B,) (higher = sharper)."""

    def __call__(self, x):
        return sharpness_index(x)
