"""Smooth periodic padding: turn a photo (blurred with a *non*-circular convolution) into an image that a
circular-convolution method can process without wrap-around ringing, then crop back.

``pad_periodic`` extends the image by a strip whose content goes smoothly from the mirror image
of the bottom/right edge to the mirror image of the top/left edge (a raised-cosine cross-fade of
the two reflections), so the padded image is continuous *and* periodic. With a strip of at least
the kernel size, no pixel of the photo is mixed with the opposite side by the circular blur: the
model mismatch stays in the strip, which is cropped away (the idea of Liu & Jia 2008 "Reducing
boundary artifacts in image deconvolution", done with a cross-fade instead of their solver).
The padded size is also rounded up to a multiple of ``multiple`` (what the UNet needs).
"""
from __future__ import annotations

import math

import torch

from diffem.physics import crop


def _mirror_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Whole-sample symmetric index (…, 2, 1, 0, 1, 2, …, n-1, n-2, …) into 0..n-1."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx % period
    return torch.where(idx < n, idx, period - idx)


def _pad_axis(x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    n = x.shape[axis]
    s = before + after
    if s == 0:
        return x
    j = torch.arange(s, device=x.device)
    right = _mirror_index(n - 1 - (j + 1), n)      # continues past the last sample
    left = _mirror_index(s - j, n)                  # continues (backwards) before the first sample
    w = 0.5 - 0.5 * torch.cos(math.pi * (j + 1).double() / (s + 1))   # 0 -> 1 across the strip
    shape = [1] * x.dim()
    shape[axis] = s
    w = w.to(x.dtype).view(shape)
    strip = (1 - w) * x.index_select(axis, right) + w * x.index_select(axis, left)
    # circular layout [x, strip] rolled so that x starts at `before`
    full = torch.cat([x, strip], dim=axis)
    return torch.roll(full, shifts=before, dims=axis)


def padding_for(size: int, margin: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding so that size + before + after ≥ size + 2·margin is a multiple."""
    total = size + 2 * margin
    total = -(-total // multiple) * multiple
    extra = total - size
    return extra // 2, extra - extra // 2


def pad_periodic(x: torch.Tensor, margin: int, multiple: int = 1):
    """Smooth periodic extension of (…, H, W) images by ≥ ``margin`` pixels on each side, the
    padded size a multiple of ``multiple``. Returns (padded, box) with box = (top, left, H, W)
    for ``crop``."""
    if margin < 0 or multiple < 1:
        raise ValueError(f"margin must be ≥ 0 and multiple ≥ 1, got {margin}, {multiple}")
    H, W = x.shape[-2:]
    top, bottom = padding_for(H, margin, multiple)
    left, right = padding_for(W, margin, multiple)
    out = _pad_axis(x, x.dim() - 2, top, bottom)
    out = _pad_axis(out, x.dim() - 1, left, right)
    return out, (top, left, H, W)


__all__ = ["pad_periodic", "crop", "padding_for"]
