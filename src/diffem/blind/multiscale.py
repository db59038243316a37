"""Coarse-to-fine blind kernel estimation (the kernel stage of diffem's default blind method).

On a pyramid of the (pre-denoised, grey) blurry image, from coarse to fine (factor √½ per level, the
kernel size scaled alike, down to ``min_size`` px), each level alternates ``iters`` times

    x ← argmin ‖k ⊛ x − v‖² + λ‖∇x‖₀                     (``steps.l0_latent``: salient edges only)
    k ← clean(argmin_{k≥0} Σ_d ‖∂_d x ⊛ k − ∂_d v‖² + γ‖k‖²)   (``steps.kernel_nnls``, ``clean_kernel``)
    λ ← max(λ · lam_ratio, lam_min)

starting from a delta at the coarsest level, each level's kernel upsampled to the next. With a
``mask`` (the observed, trusted pixels of a canvas larger than the photo: a 'valid' blur, saturated
pixels), the pixels outside it are re-imputed with k ⊛ x after every kernel step — the EM step for
missing data, under which the unmasked least squares converges to the masked one — and on canvases up to
``MASKED_LS_MAX_PIXELS`` the kernel step counts only the observed pixels (``steps.kernel_nnls`` with a
mask): EM's start, the canvas's mirrored padding, otherwise lingers in the kernel. This is the
classical scheme of Xu et al. (CVPR 2013) and Pan et al. (CVPR 2014) with changes measured on the
tuning splits (``diffem bench --protocol tune`` and ``tune-real``; docs/benchmarks/kernel-estimation.md):
the kernel step is a non-negative least squares on the support instead of a clipped Fourier
solution, and λ starts at 3.2e-2 rather than 4e-3. ``edge_window`` (off by default) weights the
latent's gradients in the kernel step of every level but the finest by their usefulness r
(``steps.edge_usefulness``, Xu & Jia, ECCV 2010) over a window of edge_window·(the level's kernel
size): 0.2 rescues textured scenes of the tune-real split (2 of 30 items there lost 6–9 dB) but costs
on the tune split and did not carry over to the validation split on its own; the default method
(``pipeline.deblur_multiscale``) runs the stage both ways and keeps the better-scored kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffem.blind.steps import clean_kernel, edge_usefulness, kernel_nnls, l0_latent
from diffem.physics import blur, center_crop_or_pad, delta_kernel, kernel_radius, recenter

DEFAULTS = dict(lam=3.2e-2, lam_ratio=1 / 1.1, lam_min=1e-4, gamma=20.0, iters=5, scale=math.sqrt(0.5),
                min_size=5, min_image=None, threshold=0.05, min_mass=0.1, nnls_iters=200, support_margin=None,
                edge_window=None, masked_ls=None, masked_iters=60)
# The kernel step's least squares counts only the observed pixels (``masked_ls``; None = on canvases up to
# this size, where its 4–6× cost per step is affordable; the photo pipeline passes False and keeps EM). The
# exact 'valid' likelihood; tuning splits, 'valid' (session 18): Levin's ER tune-real 1.860 → 1.736 (ER ≤ 2
# on 77 → 83 %, gain +3.30 → +3.65 dB), tune 1.634 → 1.596 (88 → 91 %); circular data have no mask.
MASKED_LS_MAX_PIXELS = 512 * 512
LAM_SIGMA = 5 / 255   # λ was tuned at σ = 5 and 10/255; below 5/255 fewer edges need dropping


def default_lam(sigma: float) -> float:
    """The ℓ0 weight for noise level σ: DEFAULTS['lam'] at σ ≥ 5/255, proportionally less below
    (down to 4e-3, the usual value for noise-free images)."""
    return max(4e-3, DEFAULTS["lam"] * min(1.0, float(sigma) / LAM_SIGMA))


def pyramid(shape: tuple[int, int], ksize: int, scale: float, min_size: int,
            min_image: int = 0) -> list[tuple[int, int, int]]:
    """[(h, w, kernel size)] from the finest level to the coarsest (kernel ≥ ``min_size`` px, image
    side ≥ ``min_image`` px and ≥ twice the kernel); kernel sizes odd."""
    levels, s = [], 0
    while True:
        ks = int(round(ksize * scale ** s))
        ks += (ks + 1) % 2
        h, w = (max(int(round(n * scale ** s)), 1) for n in shape)
        if levels and (ks < min_size or min(h, w) < max(2 * ks, min_image)):
            break
        levels.append((h, w, ks))
        if ks <= min_size:
            break
        s += 1
    return levels


def _resize_image(v: torch.Tensor, size) -> torch.Tensor:
    if tuple(v.shape[-2:]) == tuple(size):
        return v
    return F.interpolate(v[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]


def _resize_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(k[None, None], size=(size, size), mode="bilinear", align_corners=True)[0, 0].clamp_min(0)
    return recenter(out / out.sum())


def _place(k: torch.Tensor, size: int) -> torch.Tensor:
    """k zero-padded or cropped around its centre ⌊n/2⌋ to (size, size), renormalised."""
    out = center_crop_or_pad(k, size).contiguous()   # a cropped view would sum (and round) in another order
    return out / out.sum().clamp_min(1e-30)


def fitted_size(k: torch.Tensor, margin: float, largest: int, smallest: int) -> int:
    """The odd support that holds k's non-zero pixels around its centre plus ``margin``·(their radius) + 2 px."""
    radius = kernel_radius(k)
    return int(min(largest, max(smallest, 2 * (radius + math.ceil(margin * radius) + 2) + 1)))


def estimate_kernel_multiscale(v: torch.Tensor, kernel_size: int, mask: torch.Tensor | None = None, callback=None,
                               **settings) -> torch.Tensor:
    """The (kernel_size, kernel_size) kernel of grey image v (H, W) on [0, 1]; ``mask`` (H, W) bool:
    the pixels that are data (None: all); ``settings`` override ``DEFAULTS``. ``callback(level,
    kernel)`` is called after each level (coarse to fine)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown kernel-estimation setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **settings}
    v = v.float()     # float32: twice as fast as float64 (the tuning-split numbers are measured so)
    data = v if mask is None else v[mask]
    v = (v - data.min()) / (data.max() - data.min()).clamp_min(1e-12)   # the kernel ignores an affine change
    lam, k = p["lam"], None
    # the coarsest image: 32 px for supports up to 33, else 64 (tuning split, 33/45/65 px supports on
    # ≤ 33 px blurs: ER 1.35 / 1.50 / 1.63 so, vs 1.58 / 2.02 / 35 with 64 / none / none)
    min_image = (32 if kernel_size <= 33 else 64) if p["min_image"] is None else p["min_image"]
    levels = pyramid(tuple(v.shape[-2:]), kernel_size, p["scale"], p["min_size"], min_image)
    masked = mask is not None and (v.numel() <= MASKED_LS_MAX_PIXELS if p["masked_ls"] is None else p["masked_ls"])
    for level, (h, w, ks) in enumerate(reversed(levels)):
        v_l = _resize_image(v, (h, w))
        # a coarse pixel is data only if all of its footprint is
        m_l = None if mask is None else _resize_image(mask.double(), (h, w)) > 1 - 1e-6
        observed = v_l.clone()
        if k is None:
            k = delta_kernel(ks, dtype=v.dtype)
        elif p["support_margin"] is None:
            k = _resize_kernel(k, ks)
        else:   # the support grows with the kernel: only as large as the upsampled estimate needs
            up = _resize_kernel(k, 2 * int(round(k.shape[-1] / p["scale"] / 2)) + 1)
            k = _place(up, fitted_size(up, p["support_margin"], ks, min(ks, p["min_size"])))
        ks = k.shape[-1]
        # coarse levels decide the basin (fine texture can mislead them); the finest fits every gradient
        edges = (edge_usefulness(v_l, int(p["edge_window"] * ks))
                 if p["edge_window"] is not None and level < len(levels) - 1 else None)
        for _ in range(p["iters"]):
            x = l0_latent(v_l, k, lam)
            k = clean_kernel(kernel_nnls(x, v_l, ks, p["gamma"], p["masked_iters" if masked else "nnls_iters"],
                                         k_init=k, weight=edges, mask=m_l if masked else None),
                             p["threshold"], p["min_mass"])
            if m_l is not None:   # EM for the missing pixels
                v_l = torch.where(m_l, observed, blur(x[None, None], k)[0, 0])
            lam = max(lam * p["lam_ratio"], p["lam_min"])
        if callback is not None:
            callback(level, k)
    return _place(k, kernel_size).float()
