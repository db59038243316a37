"""``deblur_photo``: blind deblurring of a real photo of any size, end to end.

1. σ: estimated from the photo (``noise.estimate_sigma``) unless given.
2. Boundaries: the photo was blurred by a non-circular convolution. ``boundary="valid"`` (default)
   models exactly that (``Blur`` "valid": the scene beyond the photo's border is an unknown);
   ``boundary="circular"`` first extends the photo periodically and smoothly (``boundary.pad_periodic``,
   margin ≥ kernel size / 2 on each side, size rounded to a multiple of 16 for the UNet), runs the
   circular model and crops back.
3. Small photos (both sides ≤ ``window``·``full_factor``): ``diffem.deblur`` on the whole photo; its
   image and kernel are the answer.
4. Larger photos: the kernel is estimated by ``diffem.deblur`` on the ``window``×``window`` region
   with the most gradient energy and no saturation (``tiling.informative_window``); the full photo is
   then restored with that kernel tile by tile (``tiling.map_tiles``), either by the fast
   Tikhonov-gradient deconvolution with the exact non-circular boundary model
   (``restore="wiener"``, ``tiling.deconv_valid``, the default for large photos) or by the
   non-blind diffusion sampler ``diffem.restore`` on each tile (``restore="diffusion"``: best
   quality, but ~(H·W / window²) times the cost of the blind run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import diffem
from diffem.measurement import as_image, check_boundary, check_choice, check_kernel_size, parse_sigma, resolve_device
from diffem.physics import crop, wiener_deconv
from diffem.priors import load_prior
from diffem.realphoto.boundary import pad_periodic
from diffem.realphoto.noise import estimate_sigma
from diffem.realphoto.tiling import deconv_valid, informative_window, map_tiles

MULTIPLE = 16  # the UNets downsample 3-4 times
RESTORE_MODES = ("auto", "wiener", "diffusion")


@dataclass
class PhotoResult:
    image: torch.Tensor               # (C, H, W) in [0, 1], C as the input (1 or 3)
    kernel: torch.Tensor              # (k, k)
    sigma: float
    sigma_estimated: bool
    window: tuple | None              # (top, left, h, w) of the kernel-estimation region, None = whole photo
    restore: str                      # "blind" (whole photo by diffem.deblur), "wiener" or "diffusion"
    samples: torch.Tensor | None = None   # (n, C, h, w) posterior samples of the blind run (window or photo)
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def deblur_photo(y, sigma="auto", prior="default", method: str = "fast-em-pigdm", kernel_size: int = 33,
                 n_particles: int = 1, steps=None, seed: int = 0, device="auto", progress: bool = True,
                 window: int = 256, full_factor: float = 1.25, restore: str = "auto", tile: int = 512,
                 margin: int | None = None, noise_method: str = "pca", preset: str | None = None,
                 boundary: str = "valid", **options) -> PhotoResult:
    """Blind deblurring of a real photo.

    y: (C,H,W) tensor or (H,W[,C]) numpy array on [0, 1], C = 1 (processed as 3 equal channels by the RGB
    prior and averaged back) or 3. sigma: 'auto', a float or '5/255'. restore: 'auto' (whole photo
    by the blind sampler when it fits in the window, else 'wiener'), 'wiener' or 'diffusion'.
    boundary: 'valid' (the blind run models the photo as a non-circular blur of a larger, unobserved
    scene) or 'circular' (a smooth periodic extension by ``margin``, then the circular model).
    Other arguments go to ``diffem.deblur``.
    """
    t_start = time.perf_counter()
    y = as_image(y, "y", device="cpu")[0]
    C, H, W = y.shape
    if C not in (1, 3):
        raise ValueError(f"y: expected 1 (grayscale) or 3 colour channels, got {C}")
    kernel_size = check_kernel_size(kernel_size, (H, W))
    restore = check_choice(restore, RESTORE_MODES, "restore")
    boundary = check_boundary(boundary)
    if window < 2 * kernel_size:
        raise ValueError(f"window: must be at least twice the kernel size ({2 * kernel_size}), got {window}")
    margin = kernel_size // 2 + 8 if margin is None else int(margin)
    timings = {}

    # 1. noise level
    sigma = parse_sigma(sigma, allow_auto=True)
    estimated = sigma == "auto"
    if estimated:
        t = time.perf_counter()
        sigma = estimate_sigma(y, method=noise_method)
        timings["sigma_s"] = time.perf_counter() - t

    # the prior is loaded once and shared by the blind run and the tiles
    t = time.perf_counter()
    dev = resolve_device(device)
    p = load_prior(prior, preset=preset, device=dev)
    timings["load_prior_s"] = time.perf_counter() - t
    common = dict(prior=p, n_particles=n_particles, steps=steps, seed=seed, device=dev, progress=progress)

    # 2-3. blind estimation on the whole photo or on its most informative window
    whole = max(H, W) <= window * full_factor
    if whole:
        box_win = None
        region = y
    else:
        top, left = informative_window(y, window, kernel_size)
        h, w = min(window, H), min(window, W)
        box_win = (top, left, h, w)
        region = y[:, top : top + h, left : left + w]
    t = time.perf_counter()
    if boundary == "valid":   # exact non-circular model: the scene beyond the border is unobserved
        res = diffem.deblur(region, sigma, method=method, kernel_size=kernel_size, boundary="valid",
                            **common, **options)
        samples = res.samples.detach().float().cpu()
    else:                     # smooth periodic extension + the circular model (the cheaper approximation)
        padded, box = pad_periodic(region[None], margin, max(MULTIPLE, p.multiple))
        res = diffem.deblur(padded[0], sigma, method=method, kernel_size=kernel_size, **common, **options)
        samples = crop(res.samples.detach().float().cpu(), box)
    timings["blind_s"] = time.perf_counter() - t
    kernel = res.kernel.detach().float().cpu()

    # 4. restoration of the full photo
    if whole and restore in ("auto", "diffusion"):
        image, mode = samples[0], "blind"
    else:
        mode = "wiener" if restore == "auto" else restore
        t = time.perf_counter()
        if mode == "wiener":
            # interior tiles: closed-form Wiener with 2k of real context; tiles on the photo's border:
            # the exact non-circular model (CG), so no boundary assumption enters the result
            image = map_tiles(y, lambda t_: wiener_deconv(t_, kernel, sigma), tile=max(tile, 4 * kernel_size),
                              overlap=max(16, kernel_size), context=2 * kernel_size, progress=progress,
                              desc="deconvolution tiles", edge_fn=lambda t_: deconv_valid(t_, kernel, sigma))
        else:
            counter = iter(range(10**9))

            def fn(tile_y):  # one diffusion posterior sample per tile, seeds differ per tile
                r = diffem.restore(tile_y[0], kernel, sigma, prior=p, method=method.rsplit("-", 1)[1],
                                   steps=steps, seed=seed + next(counter), device=dev, progress=False)
                return r.image.detach().float().cpu()[None]
            image = map_tiles(y, fn, tile=window, overlap=max(16, kernel_size), context=margin,
                              multiple=max(MULTIPLE, p.multiple), progress=progress,
                              desc="diffusion tiles")
        timings["restore_s"] = time.perf_counter() - t
    image = image.clamp(0, 1)
    if C == 1 and image.shape[0] != 1:
        image = image.mean(0, keepdim=True)
    timings["total_s"] = time.perf_counter() - t_start
    timings.update({f"blind_{k}": v for k, v in res.timings.items()})
    info = dict(res.info)
    info.update(margin=margin, noise_method=noise_method if estimated else None)
    return PhotoResult(image=image, kernel=kernel, sigma=float(sigma), sigma_estimated=estimated, window=box_win,
                       restore=mode, samples=samples, timings=timings, info=info)


__all__ = ["deblur_photo", "PhotoResult"]
