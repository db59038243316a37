"""Large photos: choose the window to estimate the kernel on, and restore the full image tile by
tile with blended seams.

* ``informative_window``: the square window with the most gradient energy, avoiding saturated
  regions (clipped highlights break the linear blur model and mislead kernel estimation).
* ``map_tiles``: apply a restoration ``fn`` (tile -> tile, circular model) to overlapping tiles.
  Each tile is read with ``context`` extra pixels of the real photo around it (so its borders are
  real, 'valid'-blurred data), given a smooth periodic extension (diffem.padding.pad_periodic), restored,
  and its core blended into the output with raised-cosine weights over the ``overlap``.
  Memory is O(tile²) for the work plus the output accumulators (two H×W×C float32 arrays).
* ``wiener_deconv`` (``diffem.physics``): Wiener/Tikhonov deconvolution with a gradient penalty
  (circular model, closed form; lam_scale = 100 was the best of 3..1000 on CBSD68 with Levin kernels
  at σ = 2.5..20/255).
* ``deconv_valid``: the same energy with the exact non-circular model (the photo's outside pixels
  are unknowns), solved by conjugate gradients: the fast non-blind option of the pipeline.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffem.physics import crop, gradient_otf2, kernel_to_otf, wiener_deconv
from diffem.padding import _pad_axis, pad_periodic


def _gray(y: torch.Tensor) -> torch.Tensor:
    return y.mean(dim=-3) if y.dim() >= 3 else y


def saturated(y: torch.Tensor, ksize: int = 0, level: float = 0.98) -> torch.Tensor:
    """(H, W) bool: pixels of (C,H,W) y within ⌊k/2⌋ of a clipped value (any channel ≥ level or ≤ 1 − level).
    A clipped pixel is not k ⊛ x, and it spoils every blurred pixel its footprint reaches."""
    sat = ((y.amax(dim=-3) >= level) | (y.amin(dim=-3) <= 1 - level)).float()[None, None]
    r = max(ksize // 2, 1)
    # the square's max as a row max then a column max: 2(2r+1) comparisons per pixel, not (2r+1)²
    sat = F.max_pool2d(sat, (1, 2 * r + 1), stride=1, padding=(0, r))
    return F.max_pool2d(sat, (2 * r + 1, 1), stride=1, padding=(r, 0))[0, 0] > 0


def _smaller_eigenvalue(jxx, jyy, jxy):
    """The smaller eigenvalue of the symmetric 2×2 matrices [[jxx, jxy], [jxy, jyy]] (tensors, element-wise)."""
    return (jxx + jyy) / 2 - (((jxx - jyy) / 2) ** 2 + jxy ** 2).sqrt()


def informative_windows(y: torch.Tensor, size: int, ksize: int = 0, count: int = 1, stride: int = 8,
                        saturation: float = 0.98, max_saturated: float = 0.02) -> list[tuple[int, int]]:
    """(top, left) of up to ``count`` non-overlapping size×size windows of (C,H,W) image ``y`` whose
    edges are strongest *in every direction* — the smaller eigenvalue of the window's gradient
    structure tensor [Σgx², Σgxgy; Σgxgy, Σgy²]: a blur is only identifiable along directions in which
    the window has edges, so a façade of vertical lines alone is a poor window however much energy it
    has (Hu & Yang, CVPR 2012) — among windows with at most ``max_saturated`` of (dilated) saturated
    pixels (if none qualifies, the ones with the fewest); the best first."""
    g = _gray(y).double()
    H, W = g.shape
    if size >= H and size >= W:
        return [(0, 0)]
    sh, sw = min(size, H), min(size, W)
    gx = torch.zeros_like(g)
    gy = torch.zeros_like(g)
    gx[:, :-1] = g[:, 1:] - g[:, :-1]
    gy[:-1] = g[1:] - g[:-1]
    sat = saturated(y, ksize, saturation).double()
    keep = 1 - sat

    def window_sums(a):   # on a grid of positions, via an integral image
        ii = F.pad(a.cumsum(0).cumsum(1), (1, 0, 1, 0))
        tops = torch.arange(0, H - sh + 1, stride)
        lefts = torch.arange(0, W - sw + 1, stride)
        if tops[-1] != H - sh:
            tops = torch.cat([tops, torch.tensor([H - sh])])
        if lefts[-1] != W - sw:
            lefts = torch.cat([lefts, torch.tensor([W - sw])])
        T, L = tops[:, None], lefts[None, :]
        return ii[T + sh, L + sw] - ii[T, L + sw] - ii[T + sh, L] + ii[T, L], tops, lefts
    jxx, tops, lefts = window_sums(gx * gx * keep)
    jyy, jxy = window_sums(gy * gy * keep)[0], window_sums(gx * gy * keep)[0]
    e = _smaller_eigenvalue(jxx, jyy, jxy)
    frac = window_sums(sat)[0] / (sh * sw)
    ok = frac <= max_saturated
    score = torch.where(ok, e, -frac) if ok.any() else -frac
    chosen = []
    for _ in range(count):
        i = int(torch.argmax(score))
        if score.view(-1)[i] == -math.inf:
            break
        t, l = int(tops[i // len(lefts)]), int(lefts[i % len(lefts)])
        chosen.append((t, l))
        overlap = ((tops[:, None] - t).abs() < sh) & ((lefts[None, :] - l).abs() < sw)
        score = score.masked_fill(overlap, -math.inf)
    return chosen


def window_structure(y: torch.Tensor, top: int, left: int, size: int, saturation: float = 0.98) -> float:
    """The smaller eigenvalue of the gradient structure tensor of (C,H,W) ``y``'s size×size window at (top, left)
    (``informative_windows``' measure), over the pixels not within a pixel of a clipped value."""
    g = _gray(y).double()[top:top + size, left:left + size]
    keep = (~saturated(y[..., top:top + size, left:left + size], 3, saturation)).double()
    gx, gy = (g[:, 1:] - g[:, :-1]) * keep[:, :-1], (g[1:] - g[:-1]) * keep[:-1]
    return float(_smaller_eigenvalue((gx ** 2).sum(), (gy ** 2).sum(), (gx[:-1] * gy[:, :-1]).sum()))


def informative_window(y: torch.Tensor, size: int, ksize: int = 0, **kwargs) -> tuple[int, int]:
    """(top, left) of the most informative size×size window (``informative_windows``' first)."""
    return informative_windows(y, size, ksize, 1, **kwargs)[0]


def fft_size(n: int) -> int:
    """The smallest m ≥ n whose prime factors are 2, 3 and 5 (fast FFTs)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _pad_to(y: torch.Tensor, offset: int, N: int, M: int) -> torch.Tensor:
    """Smooth periodic extension of y to N×M with y starting at (offset, offset)."""
    H, W = y.shape[-2:]
    out = _pad_axis(y, y.dim() - 2, offset, N - H - offset)
    return _pad_axis(out, y.dim() - 1, offset, M - W - offset)


def deconv_valid(y: torch.Tensor, kernel: torch.Tensor, sigma: float, lam_scale: float = 100.0,
                 lam_min: float = 1e-4, iters: int = 40, tol: float = 1e-5) -> torch.Tensor:
    """Deconvolution with the exact *non-circular* model: y = valid(k ⊛ x) + n, x larger than y by
    ⌊k/2⌋ on each side. Solves (AᵀA + λ∇ᵀ∇) x = Aᵀy by conjugate gradients (λ as ``wiener_deconv``),
    starting from the periodic-padding Wiener solution, and returns x on y's pixels (B,C,H,W).
    No boundary assumption is made: pixels outside the photo are unknowns, not mirrors.
    """
    kernel = kernel.to(y.dtype)
    r = kernel.shape[-1] // 2
    H, W = y.shape[-2:]
    N, M = fft_size(H + 2 * r), fft_size(W + 2 * r)  # extra rows/cols are unknowns too (masked out)
    K = kernel_to_otf(kernel, (N, M))
    lam = max(lam_scale * sigma ** 2, lam_min)
    DtD = lam * gradient_otf2((N, M), y.dtype, y.device)
    mask = torch.zeros(N, M, dtype=y.dtype, device=y.device)
    mask[r : r + H, r : r + W] = 1

    def normal(v):  # (AᵀA + λ∇ᵀ∇) v; A = mask · circular blur on the enlarged grid (no wrap reaches the mask)
        V = torch.fft.rfft2(v)
        Av = torch.fft.irfft2(K * V, s=(N, M)) * mask
        return torch.fft.irfft2(K.conj() * torch.fft.rfft2(Av) + DtD * V, s=(N, M))

    ypad = torch.nn.functional.pad(y, (r, M - W - r, r, N - H - r))
    b = torch.fft.irfft2(K.conj() * torch.fft.rfft2(ypad), s=(N, M))
    start = _pad_to(y, r, N, M)
    x0 = wiener_deconv(start, kernel, sigma, lam_scale, lam_min)
    x = x0.clone()
    res = b - normal(x)
    p = res.clone()
    rs = (res * res).sum()
    b_norm = (b * b).sum().clamp_min(1e-30)
    for _ in range(iters):
        Ap = normal(p)
        alpha = rs / (p * Ap).sum().clamp_min(1e-30)
        x = x + alpha * p
        res = res - alpha * Ap
        rs_new = (res * res).sum()
        if rs_new / b_norm < tol ** 2:
            break
        p = res + (rs_new / rs) * p
        rs = rs_new
    return x[..., r : r + H, r : r + W]


def _blend_weights(n: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1-D weights: raised-cosine ramps of length ``overlap`` at inner edges, 1 elsewhere."""
    w = torch.ones(n, dtype=torch.float64)
    if overlap > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap)
        if not first:
            w[:overlap] = ramp
        if not last:
            w[-overlap:] = ramp.flip(0)
    return w


TILE_STRETCH = 1.25   # a tile may grow by this much when that saves a row or column of tiles


def tile_spans(n: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """(starts, size) of the tiles along an axis of n px: the fewest tiles of at most
    ``TILE_STRETCH``·tile px that cover it with ``overlap`` px shared by neighbours, all of one size
    and evenly spaced (fixed-size tiles waste up to a tile's width on the last one)."""
    largest = max(int(TILE_STRETCH * tile), 2 * overlap + 1)
    if n <= largest:
        return [0], n
    count = math.ceil((n - overlap) / (largest - overlap))
    size = math.ceil((n + (count - 1) * overlap) / count)
    return [round(i * (n - size) / (count - 1)) for i in range(count)], size


def map_tiles(y: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor] | None, tile: int = 512,
              overlap: int = 32, context: int = 33, multiple: int = 1, progress: bool = True,
              desc: str = "restoring tiles", edge_fn: Callable | None = None,
              aux: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``fn`` ((1,C,h,w) periodic image -> same shape) to overlapping tiles of (C,H,W) ``y``
    (about ``tile`` px each: ``tile_spans``).

    Each tile is taken with ``context`` pixels of surrounding photo (fewer at the photo's edges),
    periodically extended by ``context`` (+ rounding to ``multiple``), restored, cropped to the
    tile and blended. Tiles whose context reaches the photo's border go to ``edge_fn`` instead, when
    given, as they are (no padding): a method that models the unknown outside itself, like
    ``deconv_valid``; interior tiles have real context all around, so the padded ``fn`` is exact
    enough there. ``fn=None``: every tile goes to ``edge_fn`` (a method exact at any boundary, such
    as PnP with the 'valid' model); ``aux`` ((A,H,W), e.g. a mask of trusted pixels) is cut like y
    and passed to ``edge_fn`` as its second argument. Returns (C,H,W) float32.
    """
    C, H, W = y.shape
    (tops, th), (lefts, tw) = tile_spans(H, tile, overlap), tile_spans(W, tile, overlap)
    out = torch.zeros(C, H, W, dtype=torch.float32)
    wsum = torch.zeros(H, W, dtype=torch.float32)
    bar = tqdm(total=len(tops) * len(lefts), desc=desc, disable=not progress or len(tops) * len(lefts) == 1,
               leave=False)
    for i, t in enumerate(tops):
        for j, l in enumerate(lefts):
            t0, l0 = max(t - context, 0), max(l - context, 0)
            t1, l1 = min(t + th + context, H), min(l + tw + context, W)
            piece = y[None, :, t0:t1, l0:l1].float()
            if fn is None or (edge_fn is not None and (t0 == 0 or l0 == 0 or t1 == H or l1 == W)):
                restored = (edge_fn(piece) if aux is None else edge_fn(piece, aux[None, :, t0:t1, l0:l1]))[0]
            else:
                padded, box = pad_periodic(piece, context, multiple)
                restored = crop(fn(padded), box)[0]
            core = restored[:, t - t0 : t - t0 + th, l - l0 : l - l0 + tw]
            wr = _blend_weights(th, overlap, i == 0, i == len(tops) - 1)
            wc = _blend_weights(tw, overlap, j == 0, j == len(lefts) - 1)
            w = (wr[:, None] * wc[None, :]).float()
            out[:, t : t + th, l : l + tw] += core * w
            wsum[t : t + th, l : l + tw] += w
            bar.update(1)
    bar.close()
    return out / wsum.clamp_min(1e-12)


__all__ = ["informative_window", "informative_windows", "map_tiles", "saturated"]
