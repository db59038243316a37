"""Random blur-kernel generators (deepinv style: ``gen.step(batch_size, seed) -> (B, k, k)``).

Every generator returns float32 kernels that are non-negative, sum to 1 and have their centre of
mass at (⌊k/2⌋, ⌊k/2⌋) (within a few hundredths of a pixel, 0.5 px guaranteed). Randomness comes
only from a ``numpy.random.Generator``: the one given by ``seed`` in ``step``, otherwise the
generator's own (seeded in the constructor), never the global RNG.

Trajectory kernels are rendered by *bilinear splatting* of densely sampled positions (sub-pixel
accumulation), followed by a slight Gaussian blur. Bilinear splatting preserves the first moment
exactly, which is how the kernels are centred without any resampling.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

# ----------------------------------------------------------------------------- validation


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 3:
        raise ValueError(f"size must be an integer >= 3, got {size!r}")
    return int(size)


def _check_range(name: str, value, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False):
    """A parameter given as a number or a (min, max) range; returns (min, max) floats."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
        a, b = float(value[0]), float(value[1])
    else:
        try:
            a = b = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}") from None
    for v in (a, b):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    if a > b:
        raise ValueError(f"{name}: min {a} is larger than max {b}")
    return a, b


def _draw(rng: np.random.Generator, rng_pair) -> float:
    a, b = rng_pair
    return a if a == b else float(rng.uniform(a, b))


def _draw_log(rng: np.random.Generator, rng_pair) -> float:
    a, b = rng_pair
    return a if a == b else float(np.exp(rng.uniform(np.log(a), np.log(b))))


# ----------------------------------------------------------------------------- rendering


def splat(points: np.ndarray, shape: tuple[int, int], weights: np.ndarray | None = None) -> np.ndarray:
    """Bilinear splatting of (N, 2) (row, col) sub-pixel positions onto an image of ``shape``.

    Each point spreads its weight over its 4 neighbouring pixels; points outside are dropped.
    """
    H, W = shape
    w = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    r0 = np.floor(points[:, 0]).astype(np.int64)
    c0 = np.floor(points[:, 1]).astype(np.int64)
    fr = points[:, 0] - r0
    fc = points[:, 1] - c0
    out = np.zeros(H * W)
    for dr, dc, ww in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                       (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        out += np.bincount(r[ok] * W + c[ok], weights=(w * ww)[ok], minlength=H * W)
    return out.reshape(H, W)


def _com(k: np.ndarray) -> np.ndarray:
    s = k.sum()
    rows = np.arange(k.shape[0])
    cols = np.arange(k.shape[1])
    return np.array([(k.sum(1) * rows).sum() / s, (k.sum(0) * cols).sum() / s])


def render_trajectory(points: np.ndarray, size: int, blur: float = 0.4, supersample: int = 1,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """Kernel (size, size) from a trajectory of (N, 2) positions in *output-pixel* units.

    The trajectory is translated so that the kernel's centre of mass lands on (⌊k/2⌋, ⌊k/2⌋):
    splatting keeps the mean exactly; a second pass corrects the small shift that the blur's
    border losses cause. ``supersample`` renders on an s× finer canvas, then averages s×s blocks.
    """
    s = supersample
    c = size // 2
    pts = np.asarray(points, dtype=np.float64)
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = (pts * w[:, None]).sum(0) / w.sum()
    shift = np.array([c, c], dtype=np.float64) - mean
    k = None
    for _ in range(3):
        # output pixel j covers canvas pixels s*j .. s*j+s-1, whose centre is s*j + (s-1)/2
        canvas_pts = (pts + shift) * s + (s - 1) / 2
        img = splat(canvas_pts, (size * s, size * s), w)
        if blur > 0:
            img = gaussian_filter(img, sigma=blur * s, mode="constant", truncate=3.0)
        k = img.reshape(size, s, size, s).mean(axis=(1, 3)) if s > 1 else img
        if k.sum() <= 0:
            break
        err = np.array([c, c]) - _com(k)
        if np.abs(err).max() < 0.02:
            break
        shift = shift + err
    k = np.clip(k, 0, None)
    total = k.sum()
    if total <= 0:  # everything fell outside: a Dirac is the only honest answer
        k = np.zeros((size, size))
        k[c, c] = 1.0
        return k
    return k / total


def _stack(kernels: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(kernels).astype(np.float32))


# ----------------------------------------------------------------------------- generators


class KernelGenerator:
    """Base class. Subclasses implement ``_one(rng) -> (size, size) numpy array``."""

    name = "base"

    def __init__(self, size: int, seed: int | None = None):
        self.size = _check_size(size)
        self.rng = np.random.default_rng(seed)

    def _one(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, batch_size: int = 1, seed: int | None = None) -> torch.Tensor:
        """``batch_size`` kernels as a (B, k, k) float32 tensor. A given ``seed`` makes the call
        reproducible on its own; without it the generator's internal RNG advances."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rng = self.rng if seed is None else np.random.default_rng(seed)
        return _stack([self._one(rng) for _ in range(int(batch_size))])

    def __call__(self, batch_size: int = 1, seed: int | None = None) -> torch.Tensor:
        return self.step(batch_size, seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class MotionBlurGenerator(KernelGenerator):
    """Random camera-shake trajectories after LeviBorodenko's ``motionblur`` (used by DPS/BlindDPS
    with intensity 0.5), re-implemented: a path of Beta-distributed steps whose direction changes
    more and more as ``intensity`` goes from 0 (straight line) to 1 (very curved), drawn on a 2×
    canvas, slightly blurred and averaged down. Differences with the original: bilinear splatting
    instead of a PIL line, area averaging instead of LANCZOS, no 8-bit quantisation, exact centring.
    """

    name = "motion"

    def __init__(self, size: int, intensity=0.5, seed: int | None = None):
        super().__init__(size, seed)
        self.intensity = _check_range("intensity", intensity, 0.0, 1.0)

    def trajectory(self, rng: np.random.Generator, intensity: float) -> np.ndarray:
        """Polyline vertices (N, 2) in canvas (2×) pixel units, centred on 0."""
        I = intensity
        diag = math.sqrt(2.0) * 2 * self.size
        max_len = 0.75 * diag * (rng.uniform() + rng.uniform(0, I ** 2))
        steps = []
        while sum(steps) < max_len:
            step = rng.beta(1, 30) * (1 - I + 0.1) * diag
            if step < max_len:
                steps.append(step)
        max_angle = rng.uniform(0, I * math.pi)
        jitter = rng.beta(2, 20)
        angles = [rng.uniform(-max_angle, max_angle)]
        for _ in range(len(steps) - 1):
            a = rng.triangular(0, I * max_angle, max_angle + 0.1)
            prev_sign = 1.0 if angles[-1] >= 0 else -1.0
            sign = -prev_sign if rng.uniform() < jitter else prev_sign
            angles.append(sign * a)
        z = np.concatenate([[0], np.cumsum(np.array(steps) * np.exp(1j * np.array(angles)))])
        z = (z - z.mean()) * np.exp(1j * rng.uniform(0, math.pi))
        return np.stack([z.imag, z.real], axis=1)

    def _one(self, rng):
        I = _draw(rng, self.intensity)
        verts = self.trajectory(rng, I)
        # sample the polyline densely (0.25 canvas px) so that the drawn line has constant density
        seg = np.diff(verts, axis=0)
        lengths = np.hypot(seg[:, 0], seg[:, 1])
        pts = [verts[:1]]
        for v, d, L in zip(verts[:-1], seg, lengths):
            n = max(int(np.ceil(L / 0.25)), 1)
            t = (np.arange(1, n + 1) / n)[:, None]
            pts.append(v + t * d)
        pts = np.concatenate(pts) / 2.0  # canvas -> output pixel units
        # the original draws on a 2x canvas centred on the canvas; points leaving it are lost
        half = self.size / 2.0
        inside = (np.abs(pts) < half - 0.5).all(axis=1)
        pts = pts[inside] if inside.any() else np.zeros((1, 2))
        blur = max(0.01 * math.sqrt(2.0) * 2 * self.size, 0.5) / 2.0  # PIL radius int(0.01 D) on 2x
        return render_trajectory(pts, self.size, blur=blur, supersample=2)


class HandShakeGenerator(KernelGenerator):
    """A physiological hand-shake model (diffem's own; see docs/kernels.md).

    The camera's angular motion (yaw, pitch) is the sum of
      * a slow *drift*: its angular velocity is an Ornstein–Uhlenbeck process (time constant
        ``drift_tau`` s, stationary std ``drift_speed`` rad/s), i.e. smooth voluntary sway;
      * a *physiological tremor*: Gaussian noise band-limited around a peak frequency drawn in
        ``tremor_freq`` Hz (Gaussian band of std ``tremor_bandwidth`` Hz), RMS amplitude
        ``tremor_amp`` rad per axis.
    The angles are integrated over the exposure ``exposure`` s (shutter open: uniform weight in
    time), projected on the sensor (x = f·tan θ, ``focal_px`` = focal length in pixels) and
    rendered by bilinear splatting + a slight Gaussian blur of ``blur`` px (lens / pixel area).
    Any parameter may be a number or a (min, max) range; focal length and amplitudes are drawn
    log-uniformly, the others uniformly. ``focal_px`` defaults to (30·size, 90·size). With ``fit=True`` (default) a trajectory larger than the
    support is scaled down to fit (equivalent to a shorter focal length for that kernel).
    """

    name = "handshake"

    def __init__(self, size: int, exposure=(0.05, 0.4), focal_px=None, tremor_amp=(5e-5, 4e-4),
                 tremor_freq=(8.0, 12.0), tremor_bandwidth=1.5, drift_speed=(1e-2, 5e-2), drift_tau=(0.05, 0.3),
                 blur=0.4, fit: bool = True, sample_rate: float = 2000.0, seed: int | None = None):
        super().__init__(size, seed)
        if focal_px is None:  # scales with the support so that kernels fill it in the same proportion
            focal_px = (30.0 * self.size, 90.0 * self.size)
        self.exposure = _check_range("exposure", exposure, 0.0, 60.0, lo_open=True)
        self.focal_px = _check_range("focal_px", focal_px, 0.0, 1e6, lo_open=True)
        self.tremor_amp = _check_range("tremor_amp", tremor_amp, 0.0, 1.0)
        self.tremor_freq = _check_range("tremor_freq", tremor_freq, 0.0, sample_rate / 4, lo_open=True)
        self.tremor_bandwidth = _check_range("tremor_bandwidth", tremor_bandwidth, 0.0, 100.0, lo_open=True)
        self.drift_speed = _check_range("drift_speed", drift_speed, 0.0, 10.0)
        self.drift_tau = _check_range("drift_tau", drift_tau, 0.0, 100.0, lo_open=True)
        self.blur = _check_range("blur", blur, 0.0, float(size))[0]
        self.sample_rate = _check_range("sample_rate", sample_rate, 100.0, 1e6)[0]
        self.fit = bool(fit)

    def angles(self, rng: np.random.Generator, exposure: float) -> np.ndarray:
        """(N, 2) yaw/pitch angles (rad) sampled at ``sample_rate`` over one exposure."""
        fs = self.sample_rate
        n = max(int(round(exposure * fs)), 2)
        pad = int(fs)  # 1 s of extra signal so that the tremor band-pass has no edge effects
        N = n + 2 * pad
        dt = 1.0 / fs
        # tremor: white noise shaped by a Gaussian band around f0, normalised to unit RMS
        f0 = _draw(rng, self.tremor_freq)
        bw = _draw(rng, self.tremor_bandwidth)
        freqs = np.fft.rfftfreq(N, dt)
        band = np.exp(-0.5 * ((freqs - f0) / bw) ** 2)
        tremor = np.fft.irfft(np.fft.rfft(rng.standard_normal((2, N)), axis=1) * band, n=N, axis=1)
        tremor /= tremor.std(axis=1, keepdims=True) + 1e-300
        amp = _draw_log(rng, self.tremor_amp) if self.tremor_amp[0] > 0 else _draw(rng, self.tremor_amp)
        axis_ratio = rng.uniform(0.5, 1.0, size=2)  # tremor is rarely isotropic
        tremor = tremor[:, pad:pad + n] * (amp * axis_ratio)[:, None]
        # drift: OU angular velocity, exact discretisation, started from its stationary law
        tau = _draw(rng, self.drift_tau)
        v_std = _draw_log(rng, self.drift_speed) if self.drift_speed[0] > 0 else _draw(rng, self.drift_speed)
        a = math.exp(-dt / tau)
        innov = v_std * math.sqrt(1 - a * a)
        v = np.empty((2, n))
        v[:, 0] = v_std * rng.standard_normal(2)
        noise = rng.standard_normal((2, n))
        for i in range(1, n):
            v[:, i] = a * v[:, i - 1] + innov * noise[:, i]
        drift = np.cumsum(v, axis=1) * dt
        return (drift + tremor).T

    def _one(self, rng):
        exposure = _draw(rng, self.exposure)
        f = _draw_log(rng, self.focal_px)
        theta = self.angles(rng, exposure)
        pts = f * np.tan(theta)[:, ::-1]  # (yaw -> column, pitch -> row) in pixels
        pts = pts - pts.mean(0)
        if self.fit:
            limit = self.size / 2.0 - 2.0 - 3 * self.blur  # bilinear (1 px) + blur (3σ) stay inside
            ext = np.abs(pts).max()
            if ext > limit:
                pts = pts * (limit / ext)
        return render_trajectory(pts, self.size, blur=self.blur)


def _gaussian_array(size: int, s1: float, s2: float, angle_deg: float) -> np.ndarray:
    """Sampled Gaussian, symmetric about (⌊k/2⌋, ⌊k/2⌋) and therefore exactly centred."""
    th = math.radians(angle_deg)
    c = size // 2
    r, q = np.mgrid[0:size, 0:size].astype(np.float64) - c
    u = math.cos(th) * q + math.sin(th) * r
    v = -math.sin(th) * q + math.cos(th) * r
    k = np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return k / k.sum()


class GaussianBlurGenerator(KernelGenerator):
    """Gaussian kernels: isotropic (one σ) or anisotropic (σ_1, σ_2 and a rotation angle in degrees).
    σ is drawn uniformly in [sigma_min, sigma_max] (default max: size/8)."""

    name = "gaussian"

    def __init__(self, size: int, sigma_min: float = 0.5, sigma_max: float | None = None, isotropic: bool = False,
                 angle_min: float = 0.0, angle_max: float = 180.0, seed: int | None = None):
        super().__init__(size, seed)
        if sigma_max is None:
            sigma_max = max(self.size / 8.0, float(sigma_min))
        self.sigma = _check_range("sigma_min/sigma_max", (sigma_min, sigma_max), 0.0, 10.0 * self.size, lo_open=True)
        self.angle = _check_range("angle_min/angle_max", (angle_min, angle_max), -360.0, 360.0)
        self.isotropic = bool(isotropic)

    def _one(self, rng):
        s1 = _draw(rng, self.sigma)
        s2 = s1 if self.isotropic else _draw(rng, self.sigma)
        return _gaussian_array(self.size, s1, s2, _draw(rng, self.angle))


class LinearMotionGenerator(KernelGenerator):
    """Uniform straight-line motion of a given ``length`` (px) and ``angle`` (degrees), rendered with
    sub-pixel accumulation and a slight blur. Default length range [2, 0.8·size]."""

    name = "linear"

    def __init__(self, size: int, length=None, angle=(0.0, 180.0), blur: float = 0.3, seed: int | None = None):
        super().__init__(size, seed)
        if length is None:
            length = (2.0, 0.8 * self.size)
        self.length = _check_range("length", length, 0.0, 2.0 * self.size)
        self.angle = _check_range("angle", angle, -360.0, 360.0)
        self.blur = _check_range("blur", blur, 0.0, float(self.size))[0]
        if self.length[1] > self.size - 1:
            raise ValueError(f"length must be at most size-1 = {self.size - 1}, got {length!r}")

    def _one(self, rng):
        L = _draw(rng, self.length)
        th = math.radians(_draw(rng, self.angle))
        t = np.linspace(-0.5, 0.5, max(int(L * 8), 2))
        pts = np.stack([-np.sin(th) * L * t, np.cos(th) * L * t], axis=1)  # angle counter-clockwise
        return render_trajectory(pts, self.size, blur=self.blur)


class MixtureGenerator(KernelGenerator):
    """Draws each kernel from one of ``generators`` (chosen with probabilities ``weights``)."""

    name = "mixture"

    def __init__(self, generators, weights=None, seed: int | None = None):
        generators = list(generators)
        if not generators:
            raise ValueError("generators must not be empty")
        sizes = {g.size for g in generators}
        if len(sizes) != 1:
            raise ValueError(f"generators must all have the same size, got {sorted(sizes)}")
        super().__init__(sizes.pop(), seed)
        w = np.ones(len(generators)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(generators),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(generators)} finite non-negative numbers with a positive sum")
        self.generators = generators
        self.weights = w / w.sum()

    def _one(self, rng):
        g = self.generators[rng.choice(len(self.generators), p=self.weights)]
        return g._one(rng)


def training_mixture(size: int, seed: int | None = None) -> MixtureGenerator:
    """The kernel distribution the shipped denoisers are trained on: mostly camera shake
    (hand-shake model and motion trajectories of all intensities), some straight lines and
    Gaussians so that the prior does not reject them outright."""
    size = _check_size(size)
    return MixtureGenerator(
        [HandShakeGenerator(size), MotionBlurGenerator(size, intensity=(0.0, 1.0)),
         LinearMotionGenerator(size), GaussianBlurGenerator(size)],
        weights=[0.45, 0.35, 0.1, 0.1], seed=seed)


GENERATORS = {
    "motion": MotionBlurGenerator,
    "handshake": HandShakeGenerator,
    "gaussian": GaussianBlurGenerator,
    "linear": LinearMotionGenerator,
    "mix": training_mixture,
}


def make_generator(name: str, size: int, seed: int | None = None, **params) -> KernelGenerator:
    """Generator by name: motion, handshake, gaussian, linear, mix (the training mixture)."""
    if name not in GENERATORS:
        raise ValueError(f"generator: unknown name {name!r} (choose from {', '.join(GENERATORS)})")
    return GENERATORS[name](size, seed=seed, **params)


def generate_kernels(name: str, size: int, n: int = 1, seed: int | None = 0, **params) -> torch.Tensor:
    """Function form: ``n`` kernels (n, size, size) from the named generator."""
    return make_generator(name, size, seed=seed, **params).step(n)


def motion_blur_kernel(size: int, intensity: float = 0.5, seed: int | None = None) -> torch.Tensor:
    """One (size, size) MotionBlurGenerator kernel."""
    return MotionBlurGenerator(size, intensity, seed=seed).step(1)[0]


def hand_shake_kernel(size: int, seed: int | None = None, **params) -> torch.Tensor:
    """One (size, size) HandShakeGenerator kernel."""
    return HandShakeGenerator(size, seed=seed, **params).step(1)[0]


def gaussian_kernel(size: int, sigma: float, sigma2: float | None = None, angle: float = 0.0,
                    dtype=torch.float32) -> torch.Tensor:
    """A deterministic (an)isotropic Gaussian kernel (σ along the rotated axes, angle in degrees)."""
    size = _check_size(size)
    s1 = _check_range("sigma", sigma, 0.0, math.inf, lo_open=True)[0]
    s2 = s1 if sigma2 is None else _check_range("sigma2", sigma2, 0.0, math.inf, lo_open=True)[0]
    angle = _check_range("angle", angle, -math.inf, math.inf)[0]
    return torch.from_numpy(_gaussian_array(size, s1, s2, angle)).to(dtype)


def linear_motion_kernel(size: int, length: float, angle: float = 0.0, blur: float = 0.3) -> torch.Tensor:
    """A deterministic straight-line motion kernel."""
    return LinearMotionGenerator(size, length=length, angle=angle, blur=blur).step(1, seed=0)[0]
