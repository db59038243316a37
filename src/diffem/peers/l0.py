"""Anger, Facciolo & Delbracio, "Blind image deblurring using the l0 gradient prior" (IPOL 2019, #243).

A re-implementation from the algorithm's published description (our own code, torch FFTs):

1. preprocessing: grey = mean of channels, min-max normalised, edge-tapered;
2. coarse-to-fine pyramid (factor 1/2, kernel size halved and forced odd, down to 3 px);
3. per level, ``iterations`` alternations of
   * kernel step: Tikhonov least squares in the gradient domain, closed form in Fourier,
     then threshold (5 % of the max), isolated-component removal, centring, normalisation;
   * image step: min_u ‖k⊛u − v‖² + λ‖∇u‖₀ by half-quadratic splitting (Xu et al. 2013);
   * λ ← max(λ·λ_ratio, λ_min);
4. final non-blind TV-L2 deconvolution (split Bregman) of each colour channel.

The high-noise settings (Anger, Delbracio & Facciolo, ISPA 2019) are available with
``high_noise=True``: λ_min = 0.5σ, γ = 200σ, 2 iterations per scale. Their ℓ1 kernel solver and
FFDNet pre-denoising are not reproduced (see docs/peers.md).

Convolutions are circular (diffem.physics conventions); kernels are centred at ⌊k/2⌋.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from diffem.blind.steps import dx, dy, gradient_adjoint, gradient_otfs, kernel_nnls, l0_latent
from diffem.measurement import as_image, check_boundary, check_kernel_size, parse_sigma
from diffem.physics import crop_kernel, kernel_to_otf

DEFAULTS = dict(lam=4e-3, lam_ratio=1 / 1.1, lam_min=1e-4, gamma=20.0, iterations=5, scale_factor=0.5,
                kernel_threshold=0.05, remove_isolated=True, tv_lambda=None, tv_gamma=30.0, tv_iterations=7)


# --- small helpers ----------------------------------------------------------------------------
def edgetaper(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """MATLAB-style edge tapering: blend the image with its circular blur near the borders so the
    periodic extension has no jump. Weights come from the autocorrelation of the kernel's projections."""
    H, W = img.shape[-2:]

    def weights(proj: torch.Tensor, n: int) -> torch.Tensor:
        p = torch.zeros(n - 1, dtype=img.dtype)
        p[: len(proj)] = proj
        P = torch.fft.fft(p)
        beta = torch.fft.ifft(P * P.conj()).real
        beta = beta / beta.max()
        alpha = 1 - beta
        return torch.cat([alpha, alpha[:1]])

    k = kernel.to(img.dtype)
    w = weights(k.sum(1), H)[:, None] * weights(k.sum(0), W)[None, :]
    blurred = _blur(img, k)
    return w * img + (1 - w) * blurred


def _blur(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(img) * kernel_to_otf(k, img.shape[-2:]), s=img.shape[-2:])


def _center_shift(k: np.ndarray) -> np.ndarray:
    """Shift (no wrap) so that the rounded centroid sits at ⌊k/2⌋: blind deblurring cannot fix it."""
    n = k.shape[0]
    s = k.sum()
    if s <= 0:
        return k
    r = int(round(float((k.sum(1) * np.arange(n)).sum() / s)))
    c = int(round(float((k.sum(0) * np.arange(n)).sum() / s)))
    dr, dc = n // 2 - r, n // 2 - c
    out = np.zeros_like(k)
    src_r = slice(max(0, -dr), min(n, n - dr))
    dst_r = slice(max(0, dr), min(n, n + dr))
    src_c = slice(max(0, -dc), min(n, n - dc))
    dst_c = slice(max(0, dc), min(n, n + dc))
    out[dst_r, dst_c] = k[src_r, src_c]
    return out


def clean_kernel(k: torch.Tensor, threshold: float = 0.05, remove_isolated: bool = True,
                 min_mass: float = 0.1) -> torch.Tensor:
    """Clamp ≥0, zero values below threshold·max, drop 8-connected components with mass < min_mass
    (after normalising to sum 1), centre, renormalise. An all-zero result becomes a delta."""
    a = k.detach().cpu().numpy().astype(np.float64).clip(min=0)
    if a.max() > 0:
        a[a < threshold * a.max()] = 0
    if remove_isolated and a.sum() > 0:
        a = a / a.sum()
        labels, n = ndimage.label(a > 0, structure=np.ones((3, 3)))
        for lab in range(1, n + 1):
            mask = labels == lab
            if a[mask].sum() < min_mass:
                a[mask] = 0
    a = _center_shift(a)
    if a.sum() <= 0:
        a = np.zeros_like(a)
        a[a.shape[0] // 2, a.shape[1] // 2] = 1.0
    return torch.from_numpy(a / a.sum()).to(k.dtype)


# --- the two alternating steps -------------------------------------------------------------------
def kernel_step(u: torch.Tensor, v: torch.Tensor, ksize: int, gamma: float) -> torch.Tensor:
    """IPOL Alg. 3: argmin_k Σ_d ‖k ⊛ ∂_d u − ∂_d v‖² + γ‖k‖², closed form in Fourier (unnormalised FFT,
    as in the C++ code, so γ is relative to image-size-dependent energies)."""
    num = 0
    den = 0
    for d in (dx, dy):
        U = torch.fft.rfft2(d(u))
        V = torch.fft.rfft2(d(v))
        num = num + U.conj() * V
        den = den + U.abs() ** 2
    k_full = torch.fft.irfft2(num / (den + gamma), s=u.shape[-2:])
    return crop_kernel(k_full, ksize)


def tv_deconv(f: torch.Tensor, k: torch.Tensor, lam: float = 3000.0, gamma: float = 30.0,
              iterations: int = 7, tol: float = 1e-6) -> torch.Tensor:
    """Non-blind TV-L2 deconvolution, min_u ‖∇u‖₁(isotropic) + λ/2 ‖k⊛u − f‖², split Bregman with
    penalty γ (Goldstein & Osher; the solver of Getreuer's tvreg). f: (..., H, W), circular boundaries."""
    shape = f.shape[-2:]
    K = kernel_to_otf(k.to(f.dtype), shape)
    Dx, Dy = gradient_otfs(shape, f.dtype)
    denom = lam * K.abs() ** 2 + gamma * (Dx.abs() ** 2 + Dy.abs() ** 2)
    KtF = lam * K.conj() * torch.fft.rfft2(f)
    u = f.clone()
    ux = torch.zeros_like(f)   # the split variable d ≈ ∇u
    uy = torch.zeros_like(f)
    bx = torch.zeros_like(f)
    by = torch.zeros_like(f)
    for _ in range(iterations):
        # (λKᵀK + γ∇ᵀ∇) u = λKᵀf + γ∇ᵀ(d − b)
        rhs = KtF + gamma * torch.fft.rfft2(gradient_adjoint(ux - bx, uy - by))
        u_new = torch.fft.irfft2(rhs / denom, s=shape)
        gx, gy = dx(u_new) + bx, dy(u_new) + by
        mag = torch.sqrt(gx ** 2 + gy ** 2)
        shrink = (mag - 1.0 / gamma).clamp_min(0) / mag.clamp_min(1e-12)   # isotropic soft threshold
        ux, uy = gx * shrink, gy * shrink
        bx, by = gx - ux, gy - uy
        change = (u_new - u).norm() / u_new.norm().clamp_min(1e-12)
        u = u_new
        if change < tol:
            break
    return u


def _resize(img: torch.Tensor, size, mode: str) -> torch.Tensor:
    out = F.interpolate(img[None, None], size=size, mode=mode, align_corners=False,
                        antialias=(mode != "bicubic"))
    return out[0, 0]


# --- the whole method ---------------------------------------------------------------------------
def estimate_kernel_l0(v: torch.Tensor, kernel_size: int, *, lam, lam_ratio, lam_min, gamma, iterations,
                       scale_factor, kernel_threshold, remove_isolated, kernel_solver: str = "fourier", progress=False):
    """Multiscale ℓ0 kernel estimation on a grey image v (H, W) in [0,1]. Returns (kernel, latent u).
    kernel_solver: "fourier" (IPOL's closed form) or "nnls" (``blind.steps.kernel_nnls``: k ≥ 0 on the
    support; diffem's large-kernel estimator, ``blind.pipeline.estimate_kernel(estimator="l0-nnls")``)."""
    if kernel_solver not in ("fourier", "nnls"):
        raise ValueError(f"kernel_solver: expected 'fourier' or 'nnls', got {kernel_solver!r}")
    # pyramid: level 0 is the finest; kernel sizes halved and forced odd, stop under 3 px
    sizes = [(v.shape[0], v.shape[1], kernel_size)]
    while True:
        h, w, ks = sizes[-1]
        h2, w2 = int(round(h * scale_factor)), int(round(w * scale_factor))
        ks2 = int(ks * scale_factor)
        ks2 += (ks2 + 1) % 2
        if ks2 < 3 or h2 < ks2 or w2 < ks2:
            break
        sizes.append((h2, w2, ks2))
    u = None
    k = None
    bar = tqdm(total=len(sizes) * iterations, desc="l0 kernel", disable=not progress, leave=False)
    for level in reversed(range(len(sizes))):
        h, w, ks = sizes[level]
        v_l = v if level == 0 else _resize(v, (h, w), "bilinear")
        u = v_l.clone() if u is None else _resize(u, (h, w), "bicubic")
        for _ in range(iterations):
            k_ls = kernel_step(u, v_l, ks, gamma) if kernel_solver == "fourier" else kernel_nnls(u, v_l, ks, gamma)
            k = clean_kernel(k_ls, kernel_threshold, remove_isolated)
            u = l0_latent(v_l, k, lam)   # IPOL Alg. 2 (Xu et al. 2013)
            lam = max(lam * lam_ratio, lam_min)
            bar.update(1)
    bar.close()
    return k, u


KERNEL_OPTIONS = ("lam", "lam_ratio", "lam_min", "gamma", "iterations", "scale_factor", "kernel_threshold",
                  "remove_isolated")   # the options of the kernel estimation (the rest are the TV step's)


def kernel_of_grey(v: torch.Tensor, kernel_size: int, boundary: str, options: dict = DEFAULTS,
                   kernel_solver: str = "fourier", progress: bool = False) -> torch.Tensor:
    """Steps 1–3 on a grey image v (H, W): min-max normalised (the kernel does not depend on the affine
    change), edge-tapered for 'valid', then ``estimate_kernel_l0`` with ``options``' kernel settings."""
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)
    if boundary == "valid":
        v = edgetaper(v, torch.full((kernel_size, kernel_size), 1.0 / kernel_size ** 2, dtype=v.dtype))
    k, _ = estimate_kernel_l0(v, kernel_size, kernel_solver=kernel_solver, progress=progress,
                              **{n: options[n] for n in KERNEL_OPTIONS})
    return k


def deblur_l0(y, sigma: float = 0.0, kernel_size: int = 33, *, high_noise: bool = False,
              boundary: str = "circular", progress: bool = True, **options):
    """Blind deblurring with the ℓ0 gradient prior (Anger et al., IPOL 2019).

    y: (C,H,W), (1,C,H,W) or (H,W) in [0,1]. sigma: noise std on [0,1] (used only by ``high_noise``).
    kernel_size: ≥ 3. boundary: "circular" (circularly blurred data, diffem's benchmarks) or "valid"
    (real photos: IPOL's mirror padding by half the kernel size plus edge tapering).
    options override DEFAULTS (lam, lam_ratio, lam_min, gamma, iterations, scale_factor,
    kernel_threshold, remove_isolated, tv_lambda, tv_gamma, tv_iterations); tv_lambda=None means
    3000 (IPOL's value) capped at 0.25/σ².
    Returns (image (C,H,W) float32 in [0,1], kernel (k,k) float32, ≥0, sum 1).
    """
    y = as_image(y, dtype=torch.float64)[0]
    kernel_size = check_kernel_size(kernel_size, y.shape)
    sigma = parse_sigma(sigma, allow_zero=True)
    boundary = check_boundary(boundary)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = dict(DEFAULTS)
    if high_noise:   # ISPA 2019 settings
        p.update(lam_min=max(0.5 * sigma, 1e-2), gamma=200 * sigma, iterations=2)
    p.update(options)
    if p["tv_lambda"] is None:
        # IPOL uses λ = 3000 whatever the noise; that is the best TV weight only near σ ≈ 2.3/255.
        # With a known σ we use λ ≈ 0.25/σ² (measured best on CBSD68 crops, docs/benchmarks/peers.md).
        p["tv_lambda"] = 3000.0 if sigma <= 0 else min(3000.0, 0.25 / sigma ** 2)

    # 1.–3. the kernel of the grey image
    k = kernel_of_grey(y.mean(0), kernel_size, boundary, p, progress=progress)

    # 4. final non-blind TV-L2 deconvolution, per channel, on the image scaled by its max
    scale = float(y.max().clamp_min(1e-12))
    f = y / scale
    pad = kernel_size // 2
    if boundary == "valid":
        f = F.pad(f[None], (pad, pad, pad, pad), mode="reflect")[0]
        for _ in range(3):
            f = torch.stack([edgetaper(c, k) for c in f])
    x = tv_deconv(f, k, lam=p["tv_lambda"], gamma=p["tv_gamma"], iterations=p["tv_iterations"])
    if boundary == "valid":
        x = x[..., pad:-pad, pad:-pad]
    x = (x.clamp(0, 1) * scale).clamp(0, 1)
    return x.float(), k.float()
