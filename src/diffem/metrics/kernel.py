"""Kernel-estimation and data-consistency metrics.

* ``kernel_mse``: mean over the k×k pixels of (k̂ − k)², the paper's "kernel MSE".
* ``kernel_mse_aligned``: the same after the best integer translation of k̂ (blind deconvolution
  cannot tell a kernel from its translate: a shifted kernel with the oppositely shifted image explains
  y equally well). Shifts are searched in [−s, s]² with s = ⌊k/4⌋ and are zero-padded, not circular.
* ``error_ratio``: Levin et al.'s (CVPR 2009) error ratio ER = MSE(restore(y, k̂)) / MSE(restore(y, k)),
  the same non-blind restorer with the estimated and with the true kernel (default: PnP-HQS with
  FFDNet): what the kernel costs the image; ER = 1 is perfect, Levin et al. count ER < 3 as a success.
  Each MSE is taken, as in Levin et al.'s evaluation code (``comp_upto_shift``), at the best sub-pixel
  translation of the restoration (``mse_up_to_shift``): a kernel and its translate explain y equally well,
  so a translated restoration is not the kernel's error. ``psnr_up_to_shift``: the PSNR of that MSE (the
  bench's gain over the input up to translation, the same comparison for both).
* ``reblur_error``: per-element mean((k̂ ⊛ x̂ − y)²) − σ² (the paper's L_reblur up to its
  undetermined normalisation); ≈ 0 in expectation for the true image and kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffem.metrics.full_reference import as_batch
from diffem.physics import blur


def _kernels(k_hat, k):
    k_hat = torch.as_tensor(k_hat).double()
    k = torch.as_tensor(k).double()
    if k_hat.dim() == 2:
        k_hat = k_hat[None]
    if k.dim() == 2:
        k = k[None]
    if k_hat.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"kernel sizes differ: estimate {tuple(k_hat.shape[-2:])} vs true {tuple(k.shape[-2:])}")
    return torch.broadcast_tensors(k_hat, k)


def shift_zero(k: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """Translate (…, h, w) arrays by (dr, dc) pixels, filling with zeros (mass leaving the box is lost)."""
    h, w = k.shape[-2:]
    p = max(abs(dr), abs(dc))
    if p == 0:
        return k
    padded = F.pad(k, (p, p, p, p))
    return padded[..., p - dr : p - dr + h, p - dc : p - dc + w]


def kernel_mse(k_hat: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-pixel MSE between kernels (k,k) or (B,k,k); one value per kernel."""
    k_hat, k = _kernels(k_hat, k)
    return ((k_hat - k) ** 2).flatten(1).mean(1)


def kernel_mse_aligned(k_hat: torch.Tensor, k: torch.Tensor, max_shift: int | None = None,
                       return_shift: bool = False):
    """Per-pixel kernel MSE minimised over integer zero-padded shifts of k̂ within ±max_shift
    (default ⌊k/4⌋). With ``return_shift``, also returns the (B, 2) best (row, col) shifts."""
    k_hat, k = _kernels(k_hat, k)
    s = k.shape[-1] // 4 if max_shift is None else int(max_shift)
    best = torch.full((k.shape[0],), float("inf"), dtype=torch.float64)
    best_shift = torch.zeros(k.shape[0], 2, dtype=torch.long)
    # Scan in order of |shift| so that ties keep the smallest translation (0 first).
    shifts = sorted(((dr, dc) for dr in range(-s, s + 1) for dc in range(-s, s + 1)),
                    key=lambda d: (abs(d[0]) + abs(d[1]), d))
    for dr, dc in shifts:
        err = ((shift_zero(k_hat, dr, dc) - k) ** 2).flatten(1).mean(1)
        better = err < best
        best = torch.where(better, err, best)
        best_shift[better] = torch.tensor([dr, dc])
    return (best, best_shift) if return_shift else best


def reblur_error(x_hat: torch.Tensor, k_hat: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """mean((k̂ ⊛ x̂ − y)²) − σ² per batch element, with the package's circular blur.

    x_hat, y: (B,C,H,W) (or (C,H,W)); k_hat: (k,k) or (B,k,k); σ on the [0,1] scale.
    """
    x_hat, y = as_batch(x_hat, "x_hat").double(), as_batch(y, "y").double()
    if x_hat.shape != y.shape:
        raise ValueError(f"x_hat and y must have the same shape, got {tuple(x_hat.shape)} and {tuple(y.shape)}")
    r = blur(x_hat, torch.as_tensor(k_hat).double()) - y
    return (r**2).flatten(1).mean(1) - float(sigma) ** 2


def default_restorer(y: torch.Tensor, kernel: torch.Tensor, sigma: float, boundary: str = "circular") -> torch.Tensor:
    """The non-blind restorer of ``error_ratio``: PnP-HQS with FFDNet (``diffem.restore(method="pnp")``)."""
    from diffem.api import restore

    return restore(y, kernel, sigma, method="pnp", boundary=boundary, progress=False).image


SHIFT_BORDER = 15   # comp_upto_shift's border; images must be larger than twice it


def mse_up_to_shift(x_hat: torch.Tensor, x: torch.Tensor, max_shift: float = 5.0, step: float = 0.25,
                    border: int = SHIFT_BORDER) -> float:
    """min over translations t ∈ [−max_shift, max_shift]² (a grid of ``step``) of the MSE between x̂
    translated by t (bilinear) and x, on x's interior (``border`` px removed): Levin et al.'s
    ``comp_upto_shift`` (defaults theirs). x_hat, x: (C,H,W) or (H,W) of one shape."""
    x_hat, x = torch.as_tensor(x_hat).double(), torch.as_tensor(x).double()
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    H, W = x.shape[-2:]
    reach = int(max_shift) + 1
    if border < reach or min(H, W) <= 2 * border:
        raise ValueError(f"border must exceed max_shift and the image be larger than 2·border, got border={border}, "
                         f"max_shift={max_shift}, image {H}×{W}")
    inner = x[..., border:H - border, border:W - border]
    shifts = [i * step - max_shift for i in range(int(round(2 * max_shift / step)) + 1)]

    def translate(u, t, dim, n):   # u sampled at index + t along dim, over [border, n − border)
        whole = math.floor(t)
        frac = t - whole
        lo = u.narrow(dim, border + whole, n - 2 * border)
        return lo if frac == 0 else (1 - frac) * lo + frac * u.narrow(dim, border + whole + 1, n - 2 * border)

    best = float("inf")
    for tc in shifts:
        cols = translate(x_hat, tc, -1, W)
        for tr in shifts:
            best = min(best, float(((translate(cols, tr, -2, H) - inner) ** 2).mean()))
    return best


def psnr_up_to_shift(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR (dB, data range 1) of ``mse_up_to_shift``: how close x̂ is to x wherever it sits (the
    plain PSNR where x is too small for the translation search)."""
    return 10 * math.log10(1 / max(restoration_errors(x_hat, x)["mse_up_to_shift"], 1e-30))


def restoration_errors(restored: torch.Tensor, x: torch.Tensor, up_to_shift: bool = True) -> dict:
    """The errors of a restoration (C,H,W) against x: plain MSE and (unless ``up_to_shift`` is False)
    ``mse_up_to_shift``, the plain one again where x is too small for the translation search."""
    restored = torch.as_tensor(restored).double().clamp(0, 1).reshape(x.shape)
    x = torch.as_tensor(x).double()
    out = {"mse": float(((restored - x) ** 2).mean())}
    if up_to_shift:
        shiftable = min(x.shape[-2:]) > 2 * SHIFT_BORDER
        out["mse_up_to_shift"] = mse_up_to_shift(restored, x) if shiftable else out["mse"]
    return out


def error_ratio(y, k_hat, k_true, x_true, sigma: float, boundary: str = "circular", restorer=None,
                reference_mse: float | None = None, up_to_shift: bool = True) -> float:
    """ER = MSE(restore(y, k̂), x) / MSE(restore(y, k), x) for one (C,H,W) image, each MSE at the best
    translation (``mse_up_to_shift``, Levin et al.'s definition) unless ``up_to_shift`` is False;
    ``restorer(y, kernel, sigma, boundary) -> (C,H,W)``; ``reference_mse``: the denominator when
    already known (e.g. cached, of the same kind)."""
    restorer = restorer or default_restorer
    x = torch.as_tensor(x_true).double()

    def mse_with(kernel):
        errors = restoration_errors(restorer(y, torch.as_tensor(kernel).float(), sigma, boundary), x, up_to_shift)
        return errors["mse_up_to_shift" if up_to_shift else "mse"]

    ref = mse_with(k_true) if reference_mse is None else float(reference_mse)
    return mse_with(k_hat) / max(ref, 1e-20)
