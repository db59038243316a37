"""The degraded test set: images, crops, kernels and noise, all fixed by the seed.

* Images: every .png/.jpg/.bmp/.tif of ``dataset`` in sorted order (first ``limit``), converted to RGB,
  centre-cropped to ``crop``×``crop``.
* Kernels, one per image (the same for every σ): ``levin:33`` / ``usrnet:33`` / ``lai-uniform:55`` (a
  public set placed in 33×33 by ``diffem.kernels.load_kernel_set``; kernels larger than that are left
  out, with a warning), ``motion:33`` / ``handshake:33`` / ``gaussian:25`` /
  ``linear:33`` / ``mix:33`` draw from ``diffem.kernels`` generators with a seed derived from
  (seed, image index) — so image i gets the same kernel whatever ``limit`` is; ``intensity`` etc. can be
  passed as ``motion:33:intensity=0.5``. A kernel set — ``levin``/``levin09``, ``usrnet``, ``lai-uniform``
  (shipped with diffem; other sets under ``kernel_root``), a folder of .npy files or one .npy — is used in turn (image i gets
  kernel i mod n), zero-padded (centred) to the size of the largest kernel of the set.
* ``tuning:33``: the 16 kernels of the tuning split (``tuning_kernels``): USRNet's 4 motion kernels and
  12 generator kernels drawn at sizes 13–33 (small, thin trajectories included) and placed in the support.
* ``tuning-real:33``: the real-camera-shake tuning kernels (``tuning_real_kernels``): the 30 kernels Lai
  et al. estimated from real blurry photos, shrunk to 15–27 px (needs the set: ``kernel_root``).
* ``tuning-clean:33``: clean recorded trajectories (``tuning_clean_kernels``): the 4 shipped Lai16-uniform
  ground-truth kernels, each in 4 rotations, shrunk to 17–27 px (16 kernels).
* Measurement: ``boundary="circular"``: y = k ⊛ x + σ n on the crop (the authors' protocol, circular
  convolution, unclipped Gaussian noise). ``boundary="valid"``: the crop is taken (k−1) pixels larger and
  y = valid(k ⊛ x) + σ n, so y has the crop size and its borders carry real (non-periodic) content; the
  ground truth is the matching centre of the larger crop. Noise uses a generator seeded from
  (seed, image index, σ).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffem.benchmark.specs import parse_value
from diffem.kernels.generators import GENERATORS, make_generator
from diffem.kernels.loaders import KERNEL_SETS, find_kernel_files, kernel_set, load_kernel_set
from diffem.physics import blur, blur_valid
from diffem.rng import derive_seed

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(dataset: str, limit: int | None = None, skip: int = 0) -> list[str]:
    """The dataset's images in sorted order: ``limit`` of them after the first ``skip``."""
    if not os.path.isdir(dataset):
        raise ValueError(f"dataset: not a folder: {dataset}")
    files = sorted(f for f in os.listdir(dataset) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise ValueError(f"dataset: no images in {dataset}")
    if skip < 0 or skip >= len(files):
        raise ValueError(f"skip: expected 0 to {len(files) - 1} (the dataset has {len(files)} images), got {skip}")
    files = files[skip:]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {limit}")
        files = files[:limit]
    return [os.path.join(dataset, f) for f in files]


def load_rgb(path: str) -> torch.Tensor:
    """(3,H,W) float32 on [0,1] (grey and RGBA images are converted to RGB)."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def center_crop(x: torch.Tensor, size: int | None, name: str = "image") -> torch.Tensor:
    if not size:
        return x
    H, W = x.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"crop: {name} is {H}x{W}, smaller than the crop {size}")
    top, left = (H - size) // 2, (W - size) // 2
    return x[..., top : top + size, left : left + size]


def pad_kernel(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a (h,w) kernel into (size,size) keeping its centre ⌊h/2⌋ at ⌊size/2⌋."""
    h, w = k.shape
    if h > size or w > size:
        raise ValueError(f"kernel of size {h}x{w} does not fit in {size}x{size}")
    out = np.zeros((size, size), dtype=np.float32)
    r0, c0 = size // 2 - h // 2, size // 2 - w // 2
    out[r0 : r0 + h, c0 : c0 + w] = k
    return out


# (generator, drawn size, parameters) of the tuning split's generator kernels; never Levin's
TUNING_SPECS = [("motion", 17, dict(intensity=0.3)), ("motion", 21, dict(intensity=0.6)),
                ("motion", 25, dict(intensity=0.5)), ("motion", 33, dict(intensity=0.5)), ("handshake", 15, {}),
                ("handshake", 21, {}), ("handshake", 27, {}), ("handshake", 33, {}),
                ("motion", 13, dict(intensity=0.8)), ("linear", 19, {}), ("motion", 29, dict(intensity=0.9)),
                ("handshake", 19, {})]


def tuning_kernels(size: int = 33) -> list[np.ndarray]:
    """The tuning split's 16 kernels in (size, size): USRNet k09–k12, then ``TUNING_SPECS`` (fixed seeds)."""
    from diffem.kernels.loaders import place_kernel

    usrnet = load_kernel_set("usrnet", size)
    ks = [usrnet[i] for i, name in enumerate(usrnet.names) if "motion" in name]
    for j, (name, drawn, params) in enumerate(TUNING_SPECS):
        gen = make_generator(name, drawn, seed=derive_seed(7, j), **params)
        ks.append(place_kernel(gen.step(1, seed=derive_seed(11, j))[0].numpy(), size))
    return [k.numpy().astype(np.float32) for k in ks]


# the support extents (px) the real-photo estimates are shrunk to, in turn (never more than Levin's 27 px
# in a 33 support: a support must leave the blur some margin)
TUNING_REAL_EXTENTS = (15, 19, 23, 27, 21, 25, 17)


def shrink_kernel(k: np.ndarray, extent: int) -> np.ndarray:
    """k cropped to where it exceeds 2 % of its maximum (the estimates' faint noise floor goes) and, if
    larger than ``extent`` px, resized (area-averaging, aspect kept) to fit in it; sum 1."""
    k = np.clip(np.asarray(k, dtype=np.float64), 0, None)
    rows, cols = np.nonzero(k > 0.02 * k.max())
    k = k[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    n = max(k.shape)
    if n > extent:
        size = tuple(max(3, int(round(s * extent / n))) for s in k.shape)
        k = F.interpolate(torch.from_numpy(k)[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp_min(0).numpy()
    return k / k.sum()


def tuning_real_kernels(size: int = 33, root: str | None = None) -> list[np.ndarray]:
    """The real-camera-shake tuning kernels: the 30 Lai et al. (2016) estimates from real blurry photos
    (``Lai16_real_estimates``, not shipped: ``root`` or $DIFFEM_KERNELS), kernel j shrunk by
    ``shrink_kernel`` to ``TUNING_REAL_EXTENTS[j mod 7]`` px and placed in (size, size)."""
    from diffem.kernels.loaders import place_kernel

    files = find_kernel_files("lai16_real_estimates", root)
    return [place_kernel(shrink_kernel(np.load(f), min(size - 2, TUNING_REAL_EXTENTS[j % len(TUNING_REAL_EXTENTS)])),
                         size).numpy().astype(np.float32) for j, f in enumerate(files)]


# the tune-clean split's extents; kernel j is Lai16-uniform kernel j mod 4 turned by (j div 4)·90°
TUNING_CLEAN_EXTENTS = (17, 21, 25, 27)


def tuning_clean_kernels(size: int = 33) -> list[np.ndarray]:
    """Clean camera-shake trajectories for tuning: the 4 ground-truth kernels of Lai et al.'s (2016)
    uniform set (recorded trajectories, shipped; 31–75 px), kernel j = kernel j mod 4 rotated by
    (j div 4)·90° and shrunk by ``shrink_kernel`` to ``TUNING_CLEAN_EXTENTS[(j + j div 4) mod 4]`` px, in
    (size, size): 16 thin, curved trajectories without the estimates' faint pedestals of tuning-real."""
    from diffem.kernels.loaders import place_kernel

    base = [np.load(f) for f in find_kernel_files("lai-uniform", None)]
    return [place_kernel(shrink_kernel(np.rot90(base[j % 4], j // 4),
                                       min(size - 2, TUNING_CLEAN_EXTENTS[(j + j // 4) % 4])),
                         size).numpy().astype(np.float32) for j in range(16)]


class KernelSource:
    """``kernel(i)`` -> (k,k) float32 tensor for image index i; ``size``; ``spec`` (text)."""

    def __init__(self, spec: str, seed: int = 0, kernel_root: str | None = None):
        self.spec, self.seed = spec, int(seed)
        if kernel_root is not None and not os.path.isdir(kernel_root):
            raise ValueError(f"kernel_root: not a folder: {kernel_root}")
        parts = spec.split(":")
        self._set = None
        self._gen = None
        head = parts[0].lower()
        if len(parts) >= 2 and parts[1].strip().isdigit():
            self.size = int(parts[1])
            if head == "tuning":
                self._set = tuning_kernels(self.size)
                return
            if head == "tuning-clean":
                self._set = tuning_clean_kernels(self.size)
                return
            if head == "tuning-real":
                try:
                    self._set = tuning_real_kernels(self.size, kernel_root)
                except FileNotFoundError as e:
                    raise ValueError(f"kernels: {spec!r}: {e} (--kernel-root)") from None
                return
            if head not in GENERATORS:  # a public kernel set at a given size, e.g. levin:33
                if kernel_set(head) is None:
                    raise ValueError(f"kernels: {spec!r} is neither a generator ({', '.join(GENERATORS)}) nor a "
                                     f"kernel set ({', '.join(sorted(KERNEL_SETS))})")
                try:
                    n_files = len(find_kernel_files(head, kernel_root))
                    ks = load_kernel_set(head, self.size, root=kernel_root, too_large="skip")
                except (ValueError, FileNotFoundError) as e:
                    raise ValueError(f"kernels: {spec!r}: {e}") from None
                if len(ks) < n_files:
                    warnings.warn(f"kernels: {n_files - len(ks)} of the {n_files} kernels of {parts[0]!r} are larger "
                                  f"than {self.size}x{self.size} and left out", stacklevel=2)
                self._set = [k.numpy().astype(np.float32) for k in ks]
                return
            params = {}
            for tok in ":".join(parts[2:]).split(","):
                if tok.strip():
                    if "=" not in tok:
                        raise ValueError(f"kernels: expected key=value, got {tok!r} in {spec!r}")
                    k, v = tok.split("=", 1)
                    params[k.strip()] = parse_value(v.strip())
            self._gen = make_generator(head, self.size, seed=self.seed, **params)
            return
        # a kernel set at its own size: a known name, a folder of .npy, or one .npy file
        if kernel_set(head) is not None:
            try:
                files = find_kernel_files(head, kernel_root)
            except FileNotFoundError as e:
                raise ValueError(f"kernels: {spec!r}: {e} (--kernel-root)") from None
            self._set = [np.load(f).astype(np.float32) for f in files]
        elif os.path.isdir(spec):
            files = sorted(f for f in os.listdir(spec) if f.endswith(".npy"))
            if not files:
                raise ValueError(f"kernels: no .npy kernels in {spec}")
            self._set = [np.load(os.path.join(spec, f)).astype(np.float32) for f in files]
        elif os.path.isfile(spec) and spec.endswith(".npy"):
            a = np.load(spec).astype(np.float32)
            self._set = [a] if a.ndim == 2 else list(a)
        else:
            raise ValueError(f"kernels: {spec!r} is neither a generator spec (e.g. motion:33), a kernel set "
                             f"({', '.join(sorted(KERNEL_SETS))}) nor a .npy file/folder")
        for k in self._set:
            if k.ndim != 2 or (k < 0).any() or not np.isfinite(k).all():
                raise ValueError(f"kernels: {spec!r} holds a kernel that is not a finite non-negative 2-D array")
        self.size = max(max(k.shape) for k in self._set)
        self.size += 1 - self.size % 2  # odd, so that the centre ⌊k/2⌋ is the middle pixel
        self._set = [pad_kernel(k / k.sum(), self.size) for k in self._set]

    def kernel(self, i: int) -> torch.Tensor:
        if self._gen is not None:
            k = self._gen.step(1, seed=derive_seed(self.seed, i, 7919))[0]
        else:
            k = torch.from_numpy(self._set[i % len(self._set)])
        k = k.float().clamp_min(0)
        return k / k.sum()


def make_measurement(x_big: torch.Tensor, kernel: torch.Tensor, sigma: float, seed: int, boundary: str):
    """(y, x_gt) for one image: see the module docstring. x_big: (3,H,W)."""
    g = torch.Generator().manual_seed(int(seed))
    x64 = x_big.double()[None]
    k64 = kernel.double()
    if boundary == "circular":
        clean, gt = blur(x64, k64), x64
    elif boundary == "valid":
        K = kernel.shape[-1]
        off = K - 1 - K // 2  # valid output pixel i sees x[i + off] through the kernel centre
        clean = blur_valid(x64, k64)
        S = clean.shape[-1]
        gt = x64[..., off : off + clean.shape[-2], off : off + S]
    else:
        raise ValueError(f"boundary: expected 'circular' or 'valid', got {boundary!r}")
    noise = torch.randn(clean.shape, generator=g, dtype=torch.float64)
    y = clean + sigma * noise
    return y[0].float(), gt[0].float()
