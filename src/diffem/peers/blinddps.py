"""BlindDPS (Chung et al., CVPR 2023): joint diffusion posterior sampling of the image and the kernel.

Two diffusions run side by side on the same schedule: the image x_t under any diffem image prior
(``load_prior``), the kernel z_t under a kernel diffusion model (``kernel_diffusion.load_kernel_prior``,
36×36 inputs holding a 33×33 kernel). At each step (reference-notes §5):

    x̂0 = prior.x0(x_t, t),  ẑ0 = kernel_prior.x0(z_t, t)            (Eq. 12, Tweedie, clipped)
    k̂  = ((ẑ0 + 1)/2) cropped, clipped at 0, divided by its sum
    L  = ‖y − k̂ ⊛ x̂0‖₂ + reg·‖(ẑ0 + 1)/2‖₁                         (non-squared, on the [−1,1] scale)
    x_{t−1} = x'_{t−1} − scale·√ᾱ_t·∇_{x_t} L,   z_{t−1} = z'_{t−1} − scale·√ᾱ_t·∇_{z_t} L

where x'_{t−1}, z'_{t−1} are plain DDPM steps and the gradients flow through both networks.
Differences with the authors' code: the blur is diffem's true convolution with ``Blur``'s boundary
model, circular or valid (theirs is a reflect-padded correlation); the DDPM variance is "fixed small" (our networks do not learn it); the ℓ1
term is taken on the kernel before normalisation (after it, ‖k̂‖₁ = 1 and the term has no gradient).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from diffem.measurement import as_measurement, check_boundary, check_kernel_size, parse_sigma, resolve_device
from diffem.peers.kernel_diffusion import KERNEL_SIZE, PAD_SIZE, crop_net, load_kernel_prior
from diffem.physics import Blur, center_crop_or_pad, delta_kernel
from diffem.priors import load_prior
from diffem.schedule import Schedule


def _kernel_from_z0(z0: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,1,36,36) ẑ0 → (unnormalised kernel in [0,1] for the ℓ1 term, normalised (k,k) kernel)."""
    raw = ((crop_net(z0)[0, 0] + 1) / 2).clamp_min(0)
    raw = center_crop_or_pad(raw, kernel_size)
    return raw, raw / raw.sum().clamp_min(1e-12)


def deblur_blind_dps(y, sigma: float = 0.0, prior="default", kernel_size: int = KERNEL_SIZE, steps=1000,
                     seed: int = 0, progress: bool = True, *, kernel_prior=None, reg: float = 1.0,
                     scale: float = 1.0, kernel_scale: float | None = None, device="cpu",
                     boundary: str = "circular", return_info: bool = False):
    """Blind deblurring by BlindDPS. Returns (image (C,H,W) in [0,1], kernel (k,k) ≥ 0 summing to 1).

    y: (C,H,W), (1,C,H,W) or (H,W) on [0,1]. sigma is not used by the update (BlindDPS ignores it; kept
    for a uniform signature). prior: a name/path for ``load_prior`` or a ``Prior``. kernel_prior: a
    ``Prior`` on 36×36 1-channel inputs (default: the shipped weights). steps: respacing as in
    ``Schedule`` (the original uses 1000). reg: weight of the ℓ1 kernel term (``run_deblur.sh`` uses 1).
    scale / kernel_scale: multipliers of the √ᾱ_t step for the image / kernel (kernel_scale defaults
    to scale). kernel_size ≠ 33 crops or zero-pads the 33×33 kernel model's output around its centre.
    boundary: 'circular' or 'valid' (the image lives on ``Blur``'s larger canvas; only y's pixels are fitted).
    """
    sigma = parse_sigma(sigma, allow_zero=True)
    boundary = check_boundary(boundary)
    for name, v in (("reg", reg), ("scale", scale)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name}: must be finite and ≥ 0, got {v}")
    dev = resolve_device(device)
    p = load_prior(prior, device=dev)
    kp = load_prior(load_kernel_prior(device=dev) if kernel_prior is None else kernel_prior, device=dev)
    y4, gray = as_measurement(y, p.channels, dev)
    kernel_size = check_kernel_size(kernel_size, y4.shape)
    physics = Blur.for_measurement(y4, delta_kernel(kernel_size, device=dev), 0.0, boundary, p.multiple)
    y_pm = 2 * y4 - 1                         # BlindDPS works on the [−1, 1] scale
    clip_img = p.clip_denoised
    kscale = scale if kernel_scale is None else kernel_scale

    sched = Schedule.for_prior(p, steps)
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, p.channels) + physics.canvas_shape, generator=g).to(dev)
    z = torch.randn((1, 1, PAD_SIZE, PAD_SIZE), generator=g).to(dev)
    losses = []
    for i in tqdm(reversed(range(len(sched))), total=len(sched), desc="BlindDPS", disable=not progress):
        t = sched.t(i, 1, dev)
        x = x.detach().requires_grad_(True)
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = p.x0(x, t, clip=clip_img)
            z0 = kp.x0(z, t, clip=True)
            raw, k = _kernel_from_z0(z0, kernel_size)
            residual = y_pm - physics.with_kernel(k).A(x0)
            loss = torch.linalg.vector_norm(residual) + reg * raw.sum()
            gx, gz = torch.autograd.grad(loss, [x, z])
        losses.append(float(loss.detach()))
        step = float(np.sqrt(sched.alphas_cumprod[i]))
        noise_x = torch.randn(x.shape, generator=g).to(dev) if i > 0 else None
        noise_z = torch.randn(z.shape, generator=g).to(dev) if i > 0 else None
        with torch.no_grad():
            x = sched.ddpm_step(x.detach(), x0.detach(), i, noise_x) - scale * step * gx
            z = sched.ddpm_step(z.detach(), z0.detach(), i, noise_z) - kscale * step * gz
        if not torch.isfinite(x).all() or not torch.isfinite(z).all():
            raise FloatingPointError(f"BlindDPS diverged at step {i} (reduce scale)")
    image = ((physics.crop(x0.detach())[0] + 1) / 2).clamp(0, 1)
    if gray:
        image = image.mean(0, keepdim=True)
    kernel = k.detach().float()
    if return_info:
        return image.float(), kernel, {"loss": losses, "steps": len(sched)}
    return image.float(), kernel
