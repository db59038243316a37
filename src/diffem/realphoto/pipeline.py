"""``deblur_photo``: blind deblurring of a real photo of any size, end to end.

1. σ: estimated from the photo (``noise.estimate_sigma``) unless given; the kernel estimation uses it. The
   kernels' judge uses σ_r = max(√(σ² + ``compression_sigma``²), ``sigma_floor``): 8-bit quantisation, JPEG
   (``noise.jpeg_sigma`` of the file's quantisation table, which the estimate cannot see) and model error act as
   extra noise there. The restoration counts a smaller share of the JPEG noise (``noise.jpeg_restoration_sigma``).
   A colour photo with compression noise is judged on its luminance (``safeguard.LUMA``: JPEG keeps colour
   coarser, an error no kernel explains).
2. Trusted pixels: clipped pixels (a channel ≥ ``saturation`` or ≤ 1 − it) and their direct neighbours
   leave the likelihood (``Blur(trusted=…)``): their value is not k ⊛ x. (Their blurred surroundings are
   measurements of a scene that may exceed 1 where it was clipped: they stay, the latent image is not bounded.)
   The kernels' judge (step 3's choice, step 5's safeguard) also leaves out values within
   1 − ``JUDGE_SATURATION`` of 0 or 1.
3. Kernel: a photo of at most ``SMALL_PHOTO`` px gets the 256² method's kernel (``blind.deblur_multiscale``,
   at most ``SMALL_KERNEL`` px when the size is "auto"); if that kernel reaches the edge of its support
   (the blur may be longer), it competes with the candidates below. A larger photo: on the whole photo
   when it fits in ``window``·``full_factor``, else on up to ``windows`` non-overlapping informative
   windows (``tiling.informative_windows``), each kernel then scored by how well it explains the *other*
   windows (PnP restoration's residual relative to the no-blur hypothesis, the safeguard's test) and the
   best one kept. Candidates on the best window: the
   multiscale kernel stage at the support (``kernel_size="auto"``: at 25, 45 and min(75, a quarter of
   the photo)), and at the largest support the ℓ0-NNLS scheme and the kernel phase-retrieved from the
   photo's gradient autocorrelation (``blind.spectral``, in both orientations), and ℓ0-NNLS once more
   on a support with room around the longest blur (min(105, a quarter of the photo); not on photos of
   at most ``SMALL_PHOTO`` px); each is scored on the same restored crop (``judge_crops``: two where the
   first holds little of the photo's structure, the scores then their means) and, among those whose data
   fit r/r₀ is within 10 % of the best and below 0.99
   (the rough spectral kernels: within 3 % of the best other one, and only if that one is below 0.99
   itself), the one whose restoration has the sparsest gradients (ℓ1/ℓ2, Krishnan et al. 2011: blur
   and ringing both raise it) is kept.
   The default method is diffem's ``multiscale-pnp``; the paper's samplers (``fast-em-pigdm``, …) can
   be asked for and run on one window of ``window`` px.
4. Image: PnP-HQS with the kernel (cropped to its non-zero support: the same blur, smaller tiles) on the
   whole photo, in blended tiles with the exact 'valid' model on each (``restore="pnp"``, memory bounded
   by the tile), or ``"wiener"`` (fast Tikhonov), or
   ``"diffusion"`` (the non-blind diffusion sampler per tile). ``restore="sample"`` keeps the blind
   sampler's own posterior sample when the photo fits in the window.
5. Safeguard: when the kernel does not explain its own window and the held-out windows nearly as
   well as "no blur" does (the safeguard's limit; on each window's first judge crop), the photo is only
   denoised and ``info["kernel_trusted"]`` is False.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import diffem
from diffem.blind.pipeline import deblur_multiscale, estimate_kernel_denoised, predenoise
from diffem.blind.safeguard import RELATIVE_LIMIT, check_kernel, no_blur_reference
from diffem.denoisers import FFDNetDenoiser, load_denoiser
from diffem.metrics.no_reference import gradient_sparsity
from diffem.measurement import (as_image, check_boundary, check_choice, check_kernel_size, check_saturation, parse_sigma,
                                resolve_device)
from diffem.physics import Blur, crop, delta_kernel, kernel_radius, trim_kernel, wiener_deconv
from diffem.pnp import pnp_hqs
from diffem.priors import load_prior
from diffem.padding import pad_periodic
from diffem.perf import bf16_conv_fast
from diffem.realphoto.colour import linear_to_srgb, srgb_slope, srgb_to_linear
from diffem.realphoto.noise import estimate_sigma, noise_levels
from diffem.realphoto.tiling import deconv_valid, informative_windows, map_tiles, saturated, window_structure

MULTIPLE = 16  # the UNets downsample 3-4 times
RESTORE_MODES = ("auto", "pnp", "wiener", "diffusion", "sample")
SIGMA_FLOOR = 1.0 / 255
# The likelihood's mask (tiling.saturated) takes only exactly clipped values (and their neighbours): 0.98
# flagged up to 46 % of the synthetic tuning crops' pixels (colourful, not clipped) and lost their data.
# 0.98 → 1.0, session 23 (CLI defaults, 'valid'): tune-real σ 5, 10 +3.33 → +3.63 dB, ER 1.74 → 1.67,
# ER ≤ 2 82 → 87 %; tune-clean +3.40 → +3.59 dB (ER 1.73 → 2.13 through one item, −0.15 dB); photo dev set
# +4.22 → +4.45 dB, the same 3 of 20 below their input (saturated_* +6.3 → +7.6, +8.0 → +9.4 dB).
SATURATION = 1.0
# … but the kernels' judge (candidate choice, safeguard) keeps 0.98: near 0 and 1 a JPEG's tone curve is not
# linear, and with those pixels in its data fit the safeguard rejected the right kernels of two real photos
# (Lai16 real flower and family: only denoised; both deblurred with this). It costs the tuning sets a
# little (tune-real +3.63 → +3.59 dB, 167062 σ 10; dev set +4.45 → +4.41, text_02_k3): chosen on the
# Lai16 real photos, which no longer judge it blind (session 23).
JUDGE_SATURATION = 0.98
MAX_KERNEL_SIZE = 75
AUTO_SIZES = (25, 45)      # the smaller candidate supports of kernel_size="auto" (and the cap, ≤ 75)
# kernel_size="auto" on photos larger than SMALL_PHOTO also runs ℓ0-NNLS on a support of min(ROOMY_SIZE, a
# quarter of the photo), 1.4 × the longest blur aimed at: an estimate that has found part of a long trajectory
# is re-centred on its mass, and the part still missing must fit in the support to be found. Photo dev set
# (crops, session 26): at 75 px the 75 px hooks came out as dots or arcs (manmade_04_k4 −0.03, people_01_k4
# +0.86 dB); ℓ0-NNLS at 105 finds both whole (+4.23, +7.10), and the crop mean goes +4.23 → +4.82 dB. The 75 px
# candidates stay (ℓ0-NNLS at 105 loses the hooks of saturated_02_k4, r/r₀ 1.71 against 1.03 at 75, and of
# natural_05_k4), and the other estimators at 105 added nothing there (+4.83 dB with the multiscale stage and the
# spectral kernels at 105 as well, for twice the time).
ROOMY_SIZE = 105
SCORE_SIZE = 384           # candidate kernels are compared on one restored crop of this size
# … the most informative one (``tiling.informative_windows``) with few pixels within the largest support of a clipped
# value (as the estimation windows: near clipped values the scene exceeds what PnP's image can hold, and there 'no
# blur' fits best). Where that crop holds less than this share of the structure of the most informative crop with
# few clipped pixels themselves (which the judge leaves out), the choice averages the scores of both crops; the
# safeguard keeps the first crop, the kind its limit was calibrated on. In night photos lit by lamps the first rule
# leaves only dark, empty ground, on which a kernel that turns the lit scene into ringing can look best (Lai16 real
# night5: a 45 px blob, r/r₀ 0.99 there, 3.1 on the lit crop, ringing on every car; night3: 2.6, worm patterns).
# The lit crop alone does worse elsewhere: as the only crop it lost wheel's kernel, and in the safeguard car1's and
# house1's (only denoised; their metal's and paint's highlights make every kernel fit worse than 'no blur' there;
# session 31). The share is below every photo dev set photo's but one (0.07, whose choice is the same with both
# crops; the others 0.43–1, as JPEG quality 75 and 90 0.55–1), so the dev set's choices are unchanged; 15 of the 100
# Lai16 real photos are below it.
INFORMATIVE_SHARE = 0.3
RATIO_GATE = 1.1           # … among those within 10 % of the best data fit (photo dev set)
# … and that fit it at least 1 % better than 'no blur' (photo dev set: the candidates that gained had
# r/r₀ ≤ 0.983, a wrong 25 px one that lost 0.8 dB 0.9991; set with the safeguard's former 2/255 floor, kept
# at its 3/255 floor: 17 of the 20 dev picks unchanged, the other 3 as good or better, session 21)
BLUR_EVIDENCE = 0.99
# The spectral kernel is rough (the photo's own structure is in its autocorrelation): its restoration's
# sparsity is not to be trusted unless it fits the data nearly as well as the best other candidate, and
# only where that one found blur. Photo dev set and a CBSD68 × Lai16-real-estimates check set: where it
# was the better kernel its r/r₀ was ≤ 1.026 × the others' best, where it was worse but would have been
# kept 1.087; on the real photo book2 (contact sheet) every other candidate had r/r₀ ≥ 1.6 and the
# spectral one (0.65) made doubled, smeared text; on the real photo statue1 (Lai16 real, session 13) it was
# kept at 1.045 and covered the façade in streaks, where the multiscale 25 px kernel sharpens it mildly.
ROUGH_GATE = 1.03
# At σ ≈ 1/255 r/r₀ measures how closely PnP can fit y, not the kernel: the dev photos' true 75 px kernels
# fit worse (0.97–1.22) than a dot (0.84–0.87; sessions 18, 19, 25), and the 10 % gate above drops them. A
# candidate that the safeguard trusts (r/r₀ ≤ its limit) and whose restoration is sparser than the choice's by
# this factor replaces it (the sparsest such). Photo dev set (crops, session 25): only saturated_02_k4
# changes, a dot → ℓ0-NNLS's whole hook, −0.03 → +6.37 dB (end to end −0.06 → +8.30); at 0.9 people_01_k4
# also changes and loses 1.1 dB. On 58 of the 100 Lai16 real photos no pick changes (the closest came to 0.887).
SPARSITY_OVERRIDE = 0.85
# The photo's PnP restorations (the tiles, and the candidates' scores) run FFDNet in bf16 while σ_k ≥ this,
# where bf16 is fast (``bf16="auto"``); the kernel estimation stays fp32. PnP with the true kernel on the dev
# crops (σ ≈ 1/255) against fp32: from 10/255 −0.001 dB on average (worst −0.042), from 5/255 −0.008 (worst
# −0.063), bf16 throughout −0.053. From 5/255 a photo at σ ≥ 5/255 runs in bf16 throughout (the 12 MP case:
# −0.05 dB; with the faster CG of ``Blur.prox`` 389 → 290–327 s). Scored this way, the photo dev set's 20 kernel
# choices are the ones fp32 scores made (session 27).
BF16_FROM = 5 / 255
# Photos up to SMALL_PHOTO px get the 256² method's kernel (``blind.deblur_multiscale``: coarse-to-fine with
# the trained kernel prior and its masked step, at min(auto support, SMALL_KERNEL) px) instead of the
# candidates below, which were tuned on the large dev-set photos; when that kernel reaches within EDGE_MARGIN
# px of its support's edge the blur may be longer, and it competes with the candidates. Tune-real (30 CBSD68
# crops 256² × 30 real-photo kernels × σ 5, 10, 'valid'; session 20): gain +2.77 → +3.33 dB, mean ER
# 1.92 → 1.74, ER ≤ 2 73 → 82 %, worse than the input 4 → 2, 18.0 → 16.6 s; the demo's 224² cat 24.03 → 26.99
# dB (input 25.46). Without the edge rule +3.23 dB, ER 1.85 (167062 σ 10 fell from +5.42 to −0.36 dB; any
# margin 1–3 gives the same picks there), and Lai16 real 'leaf', a ~80 px blur whose 33 px kernel comes within
# 1 px of the edge, stays blurred: only the 75 px ℓ0-NNLS candidate sharpens it. The 256² kernel as one more
# candidate on every small photo: +3.18 dB, ER 1.76, 31 s, and the cat below its input. Session 24, every
# candidate restored, on the 27 tuning items where the rule ran (tune-real 6, tune-clean 21; summed gains):
# its picks +24.0 / +66.7 dB, the 256² kernel alone +12.2 / +61.2, the best candidate each time +24.2 / +71.7.
# Neither an incumbent margin for the 256² kernel (in r/r₀ or in sparsity) nor the 256² method at 45 and 65 px
# as more candidates (+24.4 / +68.8 for twice the time) earns its keep there.
SMALL_PHOTO = 512
SMALL_KERNEL = 33
EDGE_MARGIN = 2


@dataclass
class PhotoResult:
    image: torch.Tensor               # (C, H, W) in [0, 1], C as the input (1 or 3)
    kernel: torch.Tensor              # (k, k)
    sigma: float
    sigma_estimated: bool
    window: tuple | None              # (top, left, h, w) of the region whose kernel was kept, None = whole photo
    restore: str                      # how the full photo was restored: pnp | wiener | diffusion | sample | denoised
    samples: torch.Tensor | None = None   # (n, C, h, w) posterior samples of a diffusion blind run (its region)
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _unclipped(y: torch.Tensor, level: float) -> torch.Tensor:
    """(H, W) bool: the pixels of (C,H,W) y not within a pixel of a value ≥ level or ≤ 1 − level; all of
    them if fewer than a quarter are (nothing else to fit)."""
    ok = ~saturated(y, 3, level)
    return ok if float(ok.double().mean()) >= 0.25 else torch.ones_like(ok)


def judge_crops(y: torch.Tensor, ksize: int, size: int = SCORE_SIZE) -> list[tuple[int, int]]:
    """(top, left) of the size² crops of (C,H,W) y on which kernels of up to ksize px are judged: one, or two where
    the first holds little of the photo's structure (``INFORMATIVE_SHARE``)."""
    far, = informative_windows(y, size, ksize, 1)
    near, = informative_windows(y, size, 3, 1)
    little = window_structure(y, *far, size) < INFORMATIVE_SHARE * window_structure(y, *near, size)
    return [far, near] if little else [far]


def _auto_support(shape, cap: int) -> int:
    """kernel_size="auto"'s support for an (H, W) photo: a quarter of its shorter side (odd), at most ``cap``."""
    return min(cap, (min(shape) // 4) | 1)


def _kernel_size(kernel_size, shape) -> tuple[int, bool]:
    """(support to estimate with, whether it is 'auto')."""
    if kernel_size == "auto":
        return _auto_support(shape, MAX_KERNEL_SIZE), True
    return check_kernel_size(kernel_size, shape), False


class _Scorer:
    """Scores kernels on regions (each region's ``judge_crops`` for the largest support, the same pixels for every
    candidate): the means of the safeguard's r(k̂)/r(δ) (how much worse than 'no blur' a kernel explains them;
    ``luma``: of the luminance) and of its restoration's gradient sparsity, over each region's crops, then over the
    regions, and the mean r/r₀ on the regions' first crops alone (the safeguard's verdict: its limit was calibrated
    on crops away from clipped values). Each crop and its no-blur restoration are made once."""

    def __init__(self, regions, sigma: float, den, ksize: int, size: int = SCORE_SIZE, luma: bool = False):
        self.regions, self.sigma, self.den, self.ksize, self.size, self.luma = regions, sigma, den, ksize, size, luma
        self.cache = {}

    def crops(self, i: int) -> list:
        """[(y crop, its trusted pixels, the no-blur reference)] of region i."""
        if i not in self.cache:
            y, trusted = self.regions[i]
            self.cache[i] = []
            for t, l in judge_crops(y[0], self.ksize, self.size):
                yc, tc = y[..., t:t + self.size, l:l + self.size], trusted[t:t + self.size, l:l + self.size]
                physics = Blur.for_measurement(yc, delta_kernel(self.ksize, device=y.device), self.sigma, "valid",
                                               trusted=tc)
                self.cache[i].append((yc, tc, no_blur_reference(yc, physics, self.den, luma=self.luma)))
        return self.cache[i]

    def __call__(self, kernel, indices) -> tuple[float, float, float]:
        ratios, sparsity, first = [], [], []
        for i in indices:
            verdicts = [check_kernel(y, None, Blur.for_measurement(y, kernel, self.sigma, "valid", trusted=trusted),
                                     self.den, no_blur=no_blur, luma=self.luma) for y, trusted, no_blur in self.crops(i)]
            ratios.append(_mean([v["residual_ratio_relative"] for v in verdicts]))
            sparsity.append(_mean([float(gradient_sparsity(v["restored_image"])) for v in verdicts]))
            first.append(verdicts[0]["residual_ratio_relative"])
        return _mean(ratios), _mean(sparsity), _mean(first)


def _mean(values) -> float:
    return sum(values) / len(values)


def roomy_size(ksize: int, auto_size: bool, shape) -> int:
    """The support of kernel_size="auto"'s extra ℓ0-NNLS candidate for an (H, W) photo (``ROOMY_SIZE``, at most
    a quarter of the photo); ksize when there is none."""
    return max(ksize, _auto_support(shape, ROOMY_SIZE)) if auto_size else ksize


def kernel_candidates(ksize: int, auto_size: bool, roomy: int = 0) -> list[tuple[str, int]]:
    """Step 3's candidate (estimator, support) pairs, tried on the best window: diffem's multiscale stage
    (tuned on ≤ 33 px kernels; reliable only with a support close to the blur's size, so kernel_size="auto"
    tries 25, 45 and the cap), at the largest support the ℓ0-NNLS scheme and the spectral kernel in both
    orientations (each finds long trajectories that the multiscale stage loses), and ℓ0-NNLS at ``roomy``
    (``roomy_size``) when larger."""
    sizes = [n for n in AUTO_SIZES if n < ksize] + [ksize] if auto_size else [ksize]
    return ([("multiscale", n) for n in sizes] + [(e, ksize) for e in ("l0-nnls", "spectral", "spectral-flipped")]
            + ([("l0-nnls", roomy)] if roomy > ksize else []))


def edge_distance(kernel: torch.Tensor) -> int:
    """How many pixels separate the (odd, square) kernel's non-zero taps from the edge of its support (0: they
    touch it)."""
    return kernel.shape[-1] // 2 - kernel_radius(kernel)


def _choose(scores: list[tuple[float, float]], rough: tuple[int, ...] = ()) -> int:
    """The candidate kernel to keep: among those whose r/r₀ is within ``RATIO_GATE`` of the best one's
    (the others fit the data clearly worse) and below ``BLUR_EVIDENCE`` (they explain the photo better
    than 'no blur' does; if none is, the gate alone), the one whose restoration has the sparsest
    gradients. The ``rough`` candidates (the spectral kernels) take part only if the best of the others
    explains the photo better than 'no blur' (r/r₀ < ``BLUR_EVIDENCE``: a rough kernel alone never
    turns "no blur found" into a deblurred photo) and their r/r₀ is within ``ROUGH_GATE`` of it. Last, a
    candidate (not rough) that the safeguard would trust and whose restoration is sparser than that choice's by
    ``SPARSITY_OVERRIDE`` or more replaces it."""
    others = min((r for i, (r, _) in enumerate(scores) if i not in rough), default=None)
    allowed = [i for i, (r, _) in enumerate(scores)
               if i not in rough or others is None or (others < BLUR_EVIDENCE and r <= ROUGH_GATE * others)]
    best_ratio = min(scores[i][0] for i in allowed)
    eligible = [i for i in allowed if scores[i][0] <= RATIO_GATE * best_ratio]
    eligible = [i for i in eligible if scores[i][0] < BLUR_EVIDENCE] or eligible
    pick = min(eligible, key=lambda i: scores[i][1])
    much_sparser = [i for i, (r, g) in enumerate(scores)
                    if i not in rough and r <= RELATIVE_LIMIT and g <= SPARSITY_OVERRIDE * scores[pick][1]]
    return min(much_sparser, key=lambda i: scores[i][1]) if much_sparser else pick


def deblur_photo(y, sigma="auto", prior="default", method: str = "multiscale-pnp", kernel_size="auto",
                 n_particles: int = 1, steps=None, seed: int = 0, device="auto", progress: bool = True,
                 window: int | None = None, windows: int = 3, full_factor: float = 1.25, restore: str = "auto",
                 tile: int = 1024, noise_method: str = "pca", sigma_floor: float = SIGMA_FLOOR,
                 preset: str | None = None, boundary: str = "valid", denoiser="ffdnet", fallback: bool = True,
                 saturation: float = SATURATION, linear_light: bool = False, bf16="auto",
                 compression_sigma: float = 0.0, **options) -> PhotoResult:
    """Blind deblurring of a real photo (see the module docstring for the steps).

    y: (C,H,W) tensor or (H,W[,C]) numpy array on [0, 1], C = 1 or 3. sigma: 'auto', a float or '5/255'.
    kernel_size: 'auto' (blurs up to 75 px; one candidate on up to 105) or an integer. window: the
    kernel-estimation window (default 1024 for multiscale-pnp, 256 for the diffusion samplers); windows: how
    many are tried on large photos.
    restore: auto (= pnp, the best measured restorer) | pnp |
    wiener | diffusion | sample. boundary: 'valid' (the photo is the non-circular blur of a larger
    scene; exact) or 'circular' (periodic extension, the paper's synthetic setting; diffusion methods).
    linear_light: deblur in linear light (undo the sRGB curve first, re-apply it to the result).
    saturation: pixels with a channel ≥ it or ≤ 1 − it (and their neighbours) leave the likelihood
    (``SATURATION``, 1.0: only exactly clipped values).
    compression_sigma: the std of the noise lossy compression added (``noise.jpeg_sigma``; the CLI reads it from a
    JPEG's quantisation table), combined in quadrature with σ in the kernels' judge (and, as
    ``noise.jpeg_restoration_sigma``, in the restoration); when it is > 0 a colour photo's kernels are judged on its
    luminance.
    bf16: 'auto' | True | False: FFDNet in bf16 in the PnP restorations' early iterations (σ_k ≥ ``BF16_FROM``);
    'auto' where bf16 convolutions are faster than fp32 (``perf.bf16_conv_fast``).
    Other arguments go to ``diffem.deblur``.
    """
    t_start = time.perf_counter()
    y = as_image(y, "y", device="cpu")[0]
    C, H, W = y.shape
    if C not in (1, 3):
        raise ValueError(f"y: expected 1 (grayscale) or 3 colour channels, got {C}")
    method = check_choice(method, diffem.api.BLIND_METHODS, "method")
    restore = check_choice(restore, RESTORE_MODES, "restore")
    boundary = check_boundary(boundary)
    if bf16 not in ("auto", True, False):
        raise ValueError(f"bf16: expected 'auto', True or False, got {bf16!r}")
    saturation = check_saturation(saturation)
    multiscale = method == "multiscale-pnp"
    ksize, auto_size = _kernel_size(kernel_size, (H, W))
    if auto_size and not multiscale:   # the paper's samplers have kernel denoisers for 33 (and 64) only
        ksize = min(33, ksize)
    window = (1024 if multiscale else 256) if window is None else int(window)
    if window < 2 * ksize and not auto_size:
        raise ValueError(f"window: must be at least twice the kernel size ({2 * ksize}), got {window}")
    ksize = min(ksize, window // 2 | 1)
    timings, info = {}, {}

    # 1. noise level
    sigma = parse_sigma(sigma, allow_auto=True)
    compression_sigma = parse_sigma(compression_sigma, "compression_sigma", allow_zero=True)
    estimated = sigma == "auto"
    if estimated:
        t = time.perf_counter()
        sigma = estimate_sigma(y, method=noise_method)
        timings["sigma_s"] = time.perf_counter() - t
    # the compression noise only in the kernels' judge (sigma_r) and the restoration (sigma_image, a smaller share):
    # on 4 dev photos saved as JPEG quality 75, kernels estimated from y pre-denoised at 5/255 did worse than from
    # y at σ (session 28)
    sigma_r, sigma_image = noise_levels(sigma, compression_sigma,
                                        parse_sigma(sigma_floor, "sigma_floor", allow_zero=True))
    info["compression_sigma"] = compression_sigma

    dev = resolve_device(device)
    t = time.perf_counter()
    den = load_denoiser(denoiser, device=dev, prior=prior)
    p = None if multiscale else load_prior(prior, preset=preset, device=dev)
    timings["load_s"] = time.perf_counter() - t
    use_bf16 = bf16_conv_fast(dev) if bf16 == "auto" else bf16
    # the PnP restorations (the candidates' scores, the tiles) in bf16 at σ_k ≥ BF16_FROM; estimation in fp32
    pnp_den = FFDNetDenoiser(den.net, BF16_FROM) if use_bf16 and isinstance(den, FFDNetDenoiser) else den
    info["pnp_bf16_from"] = BF16_FROM if pnp_den is not den else None

    # 2. trusted pixels: not clipped (all of them if nearly everything is: nothing else to fit); the
    # kernels' judge (step 3's choice, step 5's safeguard) reads only those within the JUDGE_SATURATION range,
    # and never a pixel the likelihood leaves out (where that wider mask falls back to every pixel)
    trusted = _unclipped(y, saturation)
    judged = _unclipped(y, min(saturation, JUDGE_SATURATION)) & trusted
    info["saturated_fraction"] = float(1 - trusted.double().mean())
    sigma_k = float(sigma)   # the kernel stage's noise level (no floor: it pre-denoises at σ)
    if linear_light:   # the blur acts on light; noise on the encoded values scales by the curve's slope
        slope = float(srgb_slope(y).median())
        sigma_k, sigma_r, sigma_image = sigma_k * slope, sigma_r * slope, sigma_image * slope
        y = srgb_to_linear(y)

    # 3. the kernel
    whole = max(H, W) <= window * full_factor
    small = multiscale and whole and max(H, W) <= SMALL_PHOTO   # the 256² method's kernel first
    roomy = ksize if small else min(roomy_size(ksize, auto_size and multiscale, (H, W)), window // 2 | 1)
    boxes = [(0, 0, H, W)] if whole else [(tp, lf, min(window, H), min(window, W)) for tp, lf in
                                          informative_windows(y, window, ksize, windows if multiscale else 1)]
    regions = [(y[None, :, tp:tp + h, lf:lf + w].to(dev), trusted[tp:tp + h, lf:lf + w].to(dev))
               for tp, lf, h, w in boxes]
    t = time.perf_counter()
    samples, res, held_out = None, None, None
    luma = compression_sigma > 0 and C == 3   # a JPEG's colour is coarser than any kernel explains (safeguard.LUMA)
    score = _Scorer([(r, judged[tp:tp + h, lf:lf + w].to(dev)) for (r, _), (tp, lf, h, w) in zip(regions, boxes)],
                    sigma_r, pnp_den, roomy, luma=luma)
    info["judged_on"] = "luminance" if luma else "all channels"
    if multiscale:
        settings = dict(options.pop("kernel_settings", {}))
        # the candidates use EM's imputation, not the 256² method's masked kernel step: their gates and limits
        # were tuned with it (swapping the step alone turned the demo cat's kernel untrusted; session 18)
        settings.setdefault("masked_ls", False)

        def estimate(region, candidate, denoised=None):
            estimator, size = candidate
            v = predenoise(region[0], sigma_k, den) if denoised is None else denoised
            return estimate_kernel_denoised(v, sigma_k, size, boundary, region[1], estimator,
                                            **(settings if estimator == "multiscale" else {}))
        candidates, found = [], []
        if small:
            size = min(ksize, SMALL_KERNEL) if auto_size else ksize
            _, refined, _ = deblur_multiscale(regions[0][0], sigma_r, size, den, boundary=boundary,
                                              trusted=regions[0][1], fallback=False)
        if not small or (auto_size and edge_distance(refined) <= EDGE_MARGIN):
            candidates = kernel_candidates(ksize, auto_size, roomy)
            denoised = predenoise(regions[0][0], sigma_k, den)   # once for all the candidates
            found = [estimate(regions[0], c, denoised)
                     for c in tqdm(candidates, desc="kernel candidates", disable=not progress, leave=False)]
        if small:
            candidates, found = candidates + [("multiscale-refined", size)], found + [refined.float()]
        scores = [score(k.to(dev), [0]) for k in found]
        pick = _choose([(r, g) for r, g, _ in scores],
                       rough=tuple(i for i, (e, _) in enumerate(candidates) if e.startswith("spectral")))
        info["candidates"] = [dict(estimator=e, size=n, residual_ratio_relative=r, gradient_sparsity=g)
                              for (e, n), (r, g, _) in zip(candidates, scores)]
        info["estimator"] = candidates[pick][0]
        # the same measure of 'no blur' (the crop denoised), to read the candidates' against
        info["no_blur_gradient_sparsity"] = _mean([float(gradient_sparsity(im)) for _, _, (im, _) in score.crops(0)])
        info["judge_crops"] = len(score.crops(0))
        others = tqdm(regions[1:], desc="other windows", disable=not progress or len(regions) < 2, leave=False)
        kernels = [found[pick]] + [estimate(r, candidates[pick]) for r in others]
        if len(kernels) > 1:   # each kernel judged on the windows it was not estimated on
            scores_out = [score(k.to(dev), [j for j in range(len(regions)) if j != i]) for i, k in enumerate(kernels)]
            best = min(range(len(kernels)), key=lambda i: scores_out[i][0])
            info["window_scores"] = [r for r, _, _ in scores_out]
            held_out = scores_out[best][2]
        else:
            best = 0
        kernel = kernels[best].float().cpu()
    else:
        region, region_trusted = regions[0]
        if boundary == "valid":
            res = diffem.deblur(region[0], sigma_r, prior=p, method=method, kernel_size=ksize, boundary="valid",
                                n_particles=n_particles, steps=steps, seed=seed, device=dev, progress=progress,
                                **options)
            samples = res.samples.detach().float().cpu()
        else:
            padded, box = pad_periodic(region, ksize // 2 + 8, max(MULTIPLE, p.multiple))
            res = diffem.deblur(padded[0], sigma_r, prior=p, method=method, kernel_size=ksize,
                                n_particles=n_particles, steps=steps, seed=seed, device=dev, progress=progress,
                                **options)
            samples = crop(res.samples.detach().float().cpu(), box)
        kernel = res.kernel.detach().float().cpu()
        best = 0
    timings["kernel_s"] = time.perf_counter() - t
    window_box = None if whole else boxes[best]

    # 5. the safeguard, before the restoration: it decides which one
    t = time.perf_counter()
    own_score = (scores[pick][2] if multiscale and best == 0 else
                 score(kernel.to(dev), [best])[2])
    # trusted only if it explains its own window and (when there are others) the windows it never saw
    held_out = own_score if held_out is None else held_out
    trusted_kernel = max(own_score, held_out) <= RELATIVE_LIMIT
    info.update(kernel_trusted=trusted_kernel, residual_ratio_relative=own_score,
                residual_ratio_held_out=held_out, residual_limit=RELATIVE_LIMIT)
    timings["check_s"] = time.perf_counter() - t

    # 4. the full photo, with the kernel on its own support (the same blur; smaller canvases and tiles)
    t = time.perf_counter()
    mode = "pnp" if restore == "auto" else restore   # PnP beats the sampler's own image (docs/benchmarks/image-stage.md)
    if mode == "sample" and samples is None:
        raise ValueError("restore: 'sample' needs a diffusion method (the multiscale-pnp method draws no samples)")
    support = trim_kernel(kernel)
    context = support.shape[-1]   # real photo around each tile: a restored pixel depends on y within a few radii
    if fallback and not trusted_kernel:
        mode = "denoised"
        image = map_tiles(y, None, tile=tile, overlap=32, context=16, progress=progress, desc="denoising tiles",
                          edge_fn=lambda piece: den(piece.to(dev), sigma_image).cpu())
    elif mode == "sample":
        image = samples[0]
    elif mode == "pnp":
        def pnp_tile(piece, piece_trusted):
            physics = Blur.for_measurement(piece, support.to(dev), sigma_image, "valid",
                                           trusted=piece_trusted[0, 0].to(dev))
            return physics.crop(pnp_hqs(piece.to(dev), physics, pnp_den)).cpu()
        image = map_tiles(y, None, tile=tile, overlap=max(16, context), context=context, progress=progress,
                          desc="PnP tiles", edge_fn=pnp_tile, aux=trusted[None].float())
    elif mode == "wiener":
        image = map_tiles(y, lambda t_: wiener_deconv(t_, support, sigma_image), tile=max(tile, 4 * context),
                          overlap=max(16, context), context=context, progress=progress,
                          desc="deconvolution tiles", edge_fn=lambda t_: deconv_valid(t_, support, sigma_image))
    else:   # diffusion: one posterior sample per tile, seeds differ per tile
        p = p or load_prior(prior, preset=preset, device=dev)
        counter = iter(range(10**9))
        sampler = "pigdm" if multiscale else method.rsplit("-", 1)[1]

        def fn(tile_y):
            r = diffem.restore(tile_y[0], support, sigma_image, prior=p, method=sampler, steps=steps,
                               seed=seed + next(counter), device=dev, progress=False)
            return r.image.detach().float().cpu()[None]
        image = map_tiles(y, fn, tile=256, overlap=max(16, context), context=context // 2 + 8,
                          multiple=max(MULTIPLE, p.multiple), progress=progress, desc="diffusion tiles")
    timings["restore_s"] = time.perf_counter() - t
    image = image.clamp(0, 1)
    if linear_light:
        image = linear_to_srgb(image)
        samples = None if samples is None else linear_to_srgb(samples)
    if C == 1 and image.shape[0] != 1:
        image = image.mean(0, keepdim=True)
    timings["total_s"] = time.perf_counter() - t_start
    if res is not None:
        timings.update({f"blind_{k}": v for k, v in res.timings.items()})
        info.update({k: v for k, v in res.info.items() if k not in info})
    info.update(method=method, sigma_restore=sigma_image, sigma_judge=sigma_r,
                noise_method=noise_method if estimated else None,
                kernel_size=int(kernel.shape[-1]), kernel_support=int(support.shape[-1]), windows_tried=len(boxes),
                linear_light=linear_light)
    return PhotoResult(image=image, kernel=kernel, sigma=float(sigma), sigma_estimated=estimated, window=window_box,
                       restore=mode, samples=samples, timings=timings, info=info)


__all__ = ["deblur_photo", "PhotoResult"]
