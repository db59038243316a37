"""Noise level (σ) estimation for ``--sigma auto``.

Two estimators of the std of additive white Gaussian noise on the [0, 1] scale:

* ``"mad"``: Donoho's robust wavelet estimator, σ = median(|HH|) / 0.6745, HH being the finest
  diagonal Haar band (orthonormal, so white noise keeps its std there). Blur removes most of the
  image's energy from that band, which is why it works well on blurry photos.
* ``"pca"``: the smallest eigenvalues of the covariance of 7×7 patches (Chen, Zhu & Heng, ICCV 2015):
  the noise variance is the mean of the tail of eigenvalues whose mean equals their median.

Pixels next to saturated (clipped) values are ignored: clipping removes the noise there.
``benchmarks/realphoto.py`` measures both on CBSD68 (PCA within 1.3 % of the truth, MAD within 4.2 %), so
``estimate_sigma`` defaults to ``"pca"``.

JPEG compression is noise that neither estimator sees: it removes the finest detail (where they look for
noise) and adds blocks, ringing and coarser colour, which no blur kernel explains. ``jpeg_sigma`` turns the
file's luminance quantisation table into the std of an extra noise term (``deblur_photo``'s
``compression_sigma``), calibrated on the photo dev set saved as JPEG (docs/benchmarks/realphoto.md); the image
stage assumes less of it (``jpeg_restoration_sigma``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from diffem.measurement import as_image

SIGMA_MIN = 1.0 / 255  # floor: 8-bit quantisation and model error (JPEG: jpeg_sigma); the samplers need σ > 0
SIGMA_MAX = 0.3
# σ of JPEG compression = this × the mean step of the luminance quantisation table (on 0..255): the photo dev set
# at quality 75 (mean step 29, the quality of all 100 Lai16 real photos) lost its kernels at σ ≈ 1/255 (+0.95 dB
# on 10 photos against +7.25 as PNG); restored and judged at √(1² + 5²)/255 it gained +4.54 dB (session 28)
JPEG_SIGMA_PER_STEP = 5.0 / 29
# The image stage's share: 0.6 × √step / 255. JPEG's own error grows about as the root of the step (the dev photos'
# RGB error std 1.55, 1.77, 2.29, 3.00 /255 at quality 95, 90, 75, 50), and on the dev crops' PnP restorations with
# the CLI's kernels this law beat the linear one by +0.09 dB at quality 75 and +0.00 at 90; at quality 75 (3.2/255
# instead of 5/255) it keeps texture the linear one smoothed away (NIQE on the Lai16 real photos; session 30)
JPEG_RESTORE_PER_ROOT_STEP = 0.6


def _unsaturated_blocks(y: torch.Tensor, block: int, low=0.005, high=0.995) -> torch.Tensor:
    """(C, H//block, W//block) bool: blocks with no clipped pixel in any channel."""
    C, H, W = y.shape
    yb = y[:, : H // block * block, : W // block * block]
    yb = yb.reshape(C, H // block, block, W // block, block)
    bad = ((yb <= low) | (yb >= high)).any(dim=(2, 4)).any(dim=0, keepdim=True)
    return (~bad).expand(C, -1, -1)


def sigma_mad(y) -> float:
    """Wavelet MAD estimate (median over channels)."""
    y = as_image(y, dtype=torch.float64)[0]
    C, H, W = y.shape
    if H < 4 or W < 4:
        raise ValueError(f"y: image {H}x{W} too small to estimate the noise level")
    y = y[:, : H // 2 * 2, : W // 2 * 2]
    a, b = y[:, 0::2, 0::2], y[:, 0::2, 1::2]
    c, d = y[:, 1::2, 0::2], y[:, 1::2, 1::2]
    hh = (a - b - c + d) / 2  # orthonormal Haar diagonal detail
    ok = _unsaturated_blocks(y, 2)
    sig = []
    for ch in range(C):
        v = hh[ch][ok[ch]]
        if v.numel() < 16:  # nearly all saturated: use everything
            v = hh[ch].flatten()
        sig.append(float(v.abs().median()) / 0.6745)
    return float(np.median(sig))


def sigma_pca(y, patch: int = 7, max_patches: int = 40000, seed: int = 0) -> float:
    """Patch-PCA estimate (Chen et al. 2015) on the channels stacked as one greyscale set."""
    y = as_image(y, dtype=torch.float64)[0]
    C, H, W = y.shape
    if H < patch + 1 or W < patch + 1:
        raise ValueError(f"y: image {H}x{W} too small to estimate the noise level")
    # a fixed random subset of patch positions (same answer every run, bounded memory on big photos)
    g = torch.Generator().manual_seed(seed)
    n_pos = (H - patch + 1) * (W - patch + 1)
    n = min(max_patches, n_pos)
    pos = torch.randperm(n_pos, generator=g)[:n] if n_pos > n else torch.arange(n_pos)
    r, c = pos // (W - patch + 1), pos % (W - patch + 1)
    off = torch.arange(patch)
    rows = (r[:, None] + off[None, :])[:, :, None]          # (n, p, 1)
    cols = (c[:, None] + off[None, :])[:, None, :]          # (n, 1, p)
    patches = y[:, rows, cols].reshape(C * n, patch * patch)  # channels stacked as more patches
    sat = ((patches <= 0.005) | (patches >= 0.995)).any(dim=1)
    if (~sat).sum() > 1000:
        patches = patches[~sat]
    patches = patches - patches.mean(dim=0, keepdim=True)
    cov = patches.T @ patches / max(patches.shape[0] - 1, 1)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0).flip(0).numpy()  # descending
    # the largest tail (smallest eigenvalues) whose mean equals its median is the noise subspace
    for i in range(len(eig)):
        tail = eig[i:]
        if abs(tail.mean() - np.median(tail)) < 1e-12 + 1e-3 * tail.mean() or len(tail) == 1:
            return float(np.sqrt(tail.mean()))
        if tail.mean() <= np.median(tail):
            return float(np.sqrt(tail.mean()))
    return float(np.sqrt(eig[-1]))


def estimate_sigma(y, method: str = "pca", clip: bool = True) -> float:
    """σ of the additive noise of image ``y`` on the [0, 1] scale (layouts as ``diffem.measurement.as_image``).

    With ``clip`` the result is kept in [SIGMA_MIN, SIGMA_MAX] (the samplers need σ > 0).
    """
    if method == "mad":
        s = sigma_mad(y)
    elif method == "pca":
        s = sigma_pca(y)
    else:
        raise ValueError(f"method: unknown noise estimator {method!r} (use 'mad' or 'pca')")
    return float(np.clip(s, SIGMA_MIN, SIGMA_MAX)) if clip else s


def jpeg_sigma(quantization_step: float | None) -> float:
    """The std (on [0, 1]) of the noise JPEG compression adds, from the mean step of the file's luminance
    quantisation table (``Photo.jpeg_step``; None, a file that is not a JPEG: 0)."""
    return 0.0 if quantization_step is None else JPEG_SIGMA_PER_STEP * float(quantization_step) / 255


def jpeg_restoration_sigma(compression_sigma: float) -> float:
    """The JPEG noise std (on [0, 1]) the restoration assumes, from ``jpeg_sigma``'s value for the same file:
    ``JPEG_RESTORE_PER_ROOT_STEP`` × √step / 255 (0 for 0)."""
    step = float(compression_sigma) * 255 / JPEG_SIGMA_PER_STEP
    return JPEG_RESTORE_PER_ROOT_STEP * math.sqrt(step) / 255


def noise_levels(sigma: float, compression_sigma: float, floor: float) -> tuple[float, float]:
    """(the kernels' judge's σ, the restoration's σ): independent errors, so σ and the compression noise add in
    quadrature — all of ``compression_sigma`` for the judge, ``jpeg_restoration_sigma``'s share for the restoration
    — each at least ``floor``."""
    return (max(math.hypot(float(sigma), compression_sigma), floor),
            max(math.hypot(float(sigma), jpeg_restoration_sigma(compression_sigma)), floor))


__all__ = ["JPEG_RESTORE_PER_ROOT_STEP", "JPEG_SIGMA_PER_STEP", "estimate_sigma", "jpeg_restoration_sigma",
           "jpeg_sigma", "noise_levels", "sigma_mad", "sigma_pca", "SIGMA_MIN", "SIGMA_MAX"]
