"""Full-reference image metrics: PSNR, SSIM, PSNR of the sample average.

All functions take (B, C, H, W) tensors (a (C, H, W) or (H, W) image is promoted to a batch of one)
and return a float64 tensor with one value per batch element. Images are on the [0, 1] scale
(``data_range=1``); estimates are *not* clipped here — clip before calling if you want that.
"""
from __future__ import annotations

import torch


def as_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """(H,W) -> (1,1,H,W); (C,H,W) -> (1,C,H,W); (B,C,H,W) unchanged."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name}: expected a torch tensor, got {type(x).__name__}")
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[None]
    if x.dim() == 4:
        return x
    raise ValueError(f"{name}: expected (H,W), (C,H,W) or (B,C,H,W), got shape {tuple(x.shape)}")


def _pair(x, y):
    x, y = as_batch(x, "x"), as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x.double(), y.double()


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per batch element."""
    x, y = _pair(x, y)
    return ((x - y) ** 2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB, 10 log10(R² / MSE), per batch element (inf for identical images)."""
    return 10.0 * torch.log10(data_range**2 / mse(x, y))


def psnr_sample_average(samples: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """"PSNR SA": PSNR of the mean of n posterior samples (n, C, H, W) against the reference (C, H, W).

    The sample mean approximates the MMSE estimate, so this is higher than the PSNR of one sample.
    Returns a one-element tensor.
    """
    if samples.dim() == 3:
        samples = samples[None]
    return psnr(samples.mean(0, keepdim=True), as_batch(y, "y"), data_range)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian window of odd length ``size``."""
    r = torch.arange(size, dtype=dtype) - size // 2
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, K1: float = 0.01, K2: float = 0.03) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per batch element.

    Convention (stated because implementations differ by ~0.01): Gaussian-weighted statistics with an
    11×11 window, σ = 1.5, population (not sample) covariance, C1 = (0.01 R)², C2 = (0.03 R)²,
    R = data_range = 1; the SSIM map is averaged over the *valid* region (a 5-pixel border is dropped,
    no padding) and then over channels. This equals scikit-image
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=0)`` and the MATLAB/KAIR ``calculate_ssim`` on [0,1] floats.
    """
    x, y = _pair(x, y)
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least {win_size}x{win_size} for SSIM, got {tuple(x.shape[-2:])}")
    B, C, H, W = x.shape
    w = gaussian_window(win_size, sigma).tolist()
    Ho, Wo = H - win_size + 1, W - win_size + 1

    def filt(z):  # separable 'valid' filtering as sums of shifted slices (float64 conv2d is slow on CPU)
        r = sum(wi * z[..., i : i + Ho, :] for i, wi in enumerate(w))
        return sum(wi * r[..., :, i : i + Wo] for i, wi in enumerate(w))

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    C1, C2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux**2 + uy**2 + C1) * (vx + vy + C2))
    return s.reshape(B, C, -1).mean(-1).mean(-1)


class PSNR:
    """deepinv-style callable: ``PSNR()(x_hat, x)`` -> (B,) tensor."""

    def __init__(self, data_range: float = 1.0):
        self.data_range = data_range

    def __call__(self, x_hat, x):
        return psnr(x_hat, x, self.data_range)


class SSIM:
    """deepinv-style callable: ``SSIM()(x_hat, x)`` -> (B,) tensor (see :func:`ssim` for the convention)."""

    def __init__(self, data_range: float = 1.0):
        self.data_range = data_range

    def __call__(self, x_hat, x):
        return ssim(x_hat, x, self.data_range)
