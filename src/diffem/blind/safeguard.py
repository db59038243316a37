"""A data-fit check of an estimated kernel, and the conservative fallback.

A correct kernel lets a regularised restoration x̂ explain the measurement down to the noise: the
residual ratio r = mean((y − A x̂)²)/σ² is ≈ 1 (slightly below: the denoiser keeps a little noise).
A kernel that is too large or misshapen cannot: y holds detail at frequencies where k̂ has (near)
zeros, and the restoration either misses it or rings, so r rises. The no-blur hypothesis — the same
restorer with k = δ, i.e. y denoised — is the reference: its ratio r₀ carries the same errors of σ
and of the noise model, so the test is relative, r ≤ ``limit``·r₀, and its image is the fallback.

Both restorations are made at σ_c = max(σ, 3/255). At σ ≈ 1/255 the denoiser leaves y almost
untouched, r₀ falls to ≈ 0.8 and even the true kernel's r/r₀ reaches 1.25 (Lai16 dev photos; at a 2/255
floor they score 0.84–0.93 and the harmful kernels ≥ 1.09). At σ = 2/255 a 2/255 floor is still too low:
on tune-real's 30 crops (CBSD68 × real-photo kernels, 'valid') it rejected 5 of the 30 true kernels
(r/r₀ up to 1.09) and 16 of the 74 restorations better than their input; at 3/255 none of the true
kernels and 6 of the 74 (a 4/255 floor: 5, but 2 more bad ones passed), while it still caught 71 of the 76
worse ones (73 at 2/255). On the photo dev set (σ 1/255) the 3/255 floor changed 3 of the 20 candidate
choices, which use the same ratio: people_01_k4 −0.33 → +0.41 dB, text_02_k3 +0.15 → +2.00 dB, text_03_k4
unchanged. Above 3/255 the check runs at σ itself, as calibrated below.

Calibrated on the tuning split (32 items; docs/benchmarks/kernel-estimation.md): with the estimated,
true, 1.5×-dilated, rotated and foreign kernels, r/r₀ > 1.05 caught 71 of the 85 restorations worse
than their input and flagged none of the 75 better ones (the worst good estimate: 1.043).
Those restorations (and the photo dev set's candidate choice, which uses the same ratio) were made with
8 CG iterations in every 'valid' data step, so the check keeps that (``CHECK_PNP``) whatever the written
restoration uses (``pnp.FIRST_CG_ITERS`` in its first step).
"""
from __future__ import annotations

import torch

from diffem.physics import CG_ITERS, delta_kernel
from diffem.pnp import pnp_hqs

RELATIVE_LIMIT = 1.05
SIGMA_CHECK = 3 / 255     # the check's noise floor (see above)
CHECK_PNP = dict(first_cg_iters=CG_ITERS)   # the restorer the limit was calibrated with (see above)
# A JPEG keeps colour at half resolution (4:2:0) and quantises it more coarsely than luminance: an error no kernel
# explains, and one that a small kernel (which keeps more fine detail to fit it with) explains best. On 10 photo
# dev set photos saved as JPEG the true kernels' r/r₀ fell from 0.82–1.02 (RGB) to 0.75–0.92 on the luminance at
# quality 75 (from 0.88–1.11 to 0.79–0.94 at 90), and at 75 the 75 px hook of manmade_04_k4 was no longer passed
# over for a dot (crop +4.23 → +4.51 dB; no choice changed at 90). As a detector, 75: 15 of the 28 harmful
# candidates caught (RGB 16), 6 of 45 good ones flagged (6); 90: 19 of 32 (20), 9 of 43 (12); session 29.
# So colour JPEGs are judged on the luminance residual, with JPEG's own (BT.601) weights.
LUMA = (0.299, 0.587, 0.114)


def residual_ratio(y: torch.Tensor, x: torch.Tensor, physics, luma: bool = False) -> float:
    """mean((y − A x)²)/σ² over the observed, trusted pixels; x on the physics' canvas. ``luma``: of the
    residual's luminance only (a colour y; ``LUMA`` weights, whose noise std is σ·‖LUMA‖)."""
    r, scale = physics.residual(y, x), 1.0
    if luma and r.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=r.dtype, device=r.device)
        r, scale = (r * weights.view(1, 3, 1, 1)).sum(1, keepdim=True), float((weights ** 2).sum())
    count = r[0].numel() if physics.trusted is None else float(physics.trusted.sum()) * r.shape[1]
    return float((r ** 2).sum()) / max(count, 1.0) / (max(physics.sigma, 1e-8) ** 2 * scale)


@torch.no_grad()
def no_blur_reference(y: torch.Tensor, physics, denoiser, *, luma: bool = False,
                      **pnp_settings) -> tuple[torch.Tensor, float]:
    """The no-blur hypothesis of ``check_kernel`` for y under ``physics`` (only its boundary, trusted
    pixels, σ and kernel size matter): y restored with k = δ at the check's σ (y denoised, on y's grid,
    on [0, 1]: the fallback) and its residual ratio r₀ (``luma``: as ``residual_ratio``). The same for every
    kernel of that size."""
    physics = physics.with_sigma(max(physics.sigma, SIGMA_CHECK))
    no_blur_physics = physics.with_kernel(delta_kernel(physics.kernel.shape[-1], device=y.device))
    x0 = pnp_hqs(y, no_blur_physics, denoiser, **{**CHECK_PNP, **pnp_settings})
    return no_blur_physics.crop(x0).clamp(0, 1), residual_ratio(y, x0, no_blur_physics, luma)


@torch.no_grad()
def check_kernel(y: torch.Tensor, x: torch.Tensor | None, physics, denoiser, limit: float = RELATIVE_LIMIT,
                 no_blur: tuple[torch.Tensor, float] | None = None, *, luma: bool = False, **pnp_settings) -> dict:
    """Is ``physics.kernel`` trusted, given its PnP restoration x (on the canvas) of y (None: made here,
    with ``CHECK_PNP``)? ``no_blur``: ``no_blur_reference``'s result when already made (with the same
    ``luma``). ``luma``: both residuals of the luminance only (a JPEG's colour photo, see ``LUMA``). Returns the
    verdict, both residual ratios and r/r₀, the restoration the verdict is about and the no-blur one (both on
    y's grid, on [0, 1]; the latter, at the check's σ, is the fallback)."""
    if physics.sigma < SIGMA_CHECK:    # both hypotheses at the check's noise floor
        physics, x = physics.with_sigma(SIGMA_CHECK), None
    if x is None:
        x = pnp_hqs(y, physics, denoiser, **{**CHECK_PNP, **pnp_settings})
    r = residual_ratio(y, x, physics, luma)
    fallback, r0 = (no_blur_reference(y, physics, denoiser, luma=luma, **pnp_settings) if no_blur is None
                    else no_blur)
    return {"kernel_trusted": bool(r <= limit * r0), "residual_ratio": r, "residual_ratio_no_blur": r0,
            "residual_ratio_relative": r / max(r0, 1e-12), "residual_limit": limit,
            "restored_image": physics.crop(x).clamp(0, 1), "fallback_image": fallback}
