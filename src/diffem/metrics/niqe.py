"""NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image quality analyzer",
IEEE SPL 2013), own implementation with parameters fitted by diffem.

Features (per P×P patch, P = 96 by default, at two scales — the image and its ×1/2 bicubic
reduction with P/2 patches): on the MSCN coefficients (local mean/contrast normalised luminance,
7×7 Gaussian window σ = 7/6, C = 1 on the 0..255 scale), a zero-mean GGD fit of the coefficients
(shape, variance) and an asymmetric GGD fit of the products of neighbours in four orientations
(shape, mean, left and right variances) → 18 features per scale, 36 in all.

Model: a multivariate Gaussian (μ, Σ) of the features of sharp patches (local-sharpness selection with
threshold 0.75 × the image's sharpest patch, as in the original) of pristine photos. diffem ships its own
fit on the 432 CBSD432 training photos (BSDS500 minus CBSD68; see ``scripts`` in
``python -m diffem.metrics.niqe --fit DIR``), in ``diffem/weights/niqe_params.npz``. Because the
pristine set differs from the original 125 photos, scores are **not numerically comparable** to
MATLAB NIQE; compare methods with each other. Lower = more natural.

Score of a test image: NIQE = sqrt((μ − μ_t)ᵀ pinv((Σ + Σ_t)/2) (μ − μ_t)) with (μ_t, Σ_t) the
features of *all* its patches. An image smaller than one patch has no NIQE (NaN).
"""
from __future__ import annotations

import argparse
import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import correlate
from scipy.special import gamma as G

from diffem.files import atomic_write

PARAMS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "niqe_params.npz")

_ALPHAS = np.arange(0.2, 10.0005, 0.001)
_R_GGD = G(2 / _ALPHAS) ** 2 / (G(1 / _ALPHAS) * G(3 / _ALPHAS))


def _gauss7() -> np.ndarray:
    r = np.arange(-3, 4)
    w = np.exp(-0.5 * (r / (7 / 6)) ** 2)
    w2 = np.outer(w, w)
    return w2 / w2.sum()


def mscn(img: np.ndarray, C: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a grey image on the 0..255 scale."""
    w = _gauss7()
    mu = correlate(img, w, mode="nearest")
    sd = np.sqrt(np.abs(correlate(img * img, w, mode="nearest") - mu * mu))
    return (img - mu) / (sd + C), sd


def _fit_aggd(x: np.ndarray):
    """Moment-matching fit of an asymmetric GGD, vectorised over the first axis of x (n, m).

    Returns shape α, mean parameter, left and right variances (all (n,))."""
    neg, pos = x < 0, x > 0
    left = np.sqrt((np.where(neg, x * x, 0).sum(1)) / np.maximum(neg.sum(1), 1))
    right = np.sqrt((np.where(pos, x * x, 0).sum(1)) / np.maximum(pos.sum(1), 1))
    g = left / np.maximum(right, 1e-12)
    r_hat = np.abs(x).mean(1) ** 2 / np.maximum((x * x).mean(1), 1e-12)
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = _ALPHAS[np.argmin((_R_GGD[None, :] - r_norm[:, None]) ** 2, axis=1)]
    bl = left * np.sqrt(G(1 / alpha) / G(3 / alpha))
    br = right * np.sqrt(G(1 / alpha) / G(3 / alpha))
    mean = (br - bl) * G(2 / alpha) / G(1 / alpha)
    return alpha, mean, left**2, right**2


def _patches(a: np.ndarray, p: int) -> np.ndarray:
    """Non-overlapping p×p patches (the incomplete right/bottom strips are dropped): (n, p, p)."""
    H, W = a.shape
    nh, nw = H // p, W // p
    a = a[: nh * p, : nw * p].reshape(nh, p, nw, p).transpose(0, 2, 1, 3)
    return a.reshape(nh * nw, p, p)


def _scale_features(img: np.ndarray, p: int):
    """18 features per patch and per-patch sharpness for one scale. img: grey, 0..255."""
    m, sd = mscn(img)
    mp = _patches(m, p)
    n = mp.shape[0]
    if n == 0:
        return np.zeros((0, 18)), np.zeros(0)
    flat = mp.reshape(n, -1)
    a, _, l2, r2 = _fit_aggd(flat)
    feats = [a, (l2 + r2) / 2]
    # products with the right, lower, lower-right and lower-left neighbours (circularly within a patch)
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = np.roll(mp, shift=(-dr, -dc), axis=(1, 2))
        a, mean, l2, r2 = _fit_aggd((mp * shifted).reshape(n, -1))
        feats += [a, mean, l2, r2]
    sharp = _patches(sd, p).reshape(n, -1).mean(1)
    return np.stack(feats, 1), sharp


def _to_gray255(x) -> np.ndarray:
    """(C,H,W) / (H,W) tensor or array in [0,1] -> grey (H,W) float64 on 0..255 (BT.601 luma for RGB)."""
    a = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    if a.ndim == 3:
        a = (0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]) if a.shape[0] == 3 else a.mean(0)
    return np.clip(a, 0, 1) * 255.0


def _half(img: np.ndarray) -> np.ndarray:
    """×1/2 bicubic reduction (antialiased, like MATLAB imresize)."""
    H, W = img.shape
    im = Image.fromarray(img.astype(np.float32), mode="F")
    return np.asarray(im.resize((max(W // 2, 1), max(H // 2, 1)), Image.BICUBIC), dtype=np.float64)


def niqe_features(x, patch_size: int = 96, select_sharp: float | None = None) -> np.ndarray:
    """(n_patches, 36) NIQE features of one image (C,H,W)/(H,W) in [0,1].

    ``select_sharp``: keep only patches whose local sharpness exceeds this fraction of the image's
    sharpest patch (0.75 when fitting the pristine model; None keeps all, as when scoring)."""
    img = _to_gray255(x)
    f1, s1 = _scale_features(img, patch_size)
    f2, _ = _scale_features(_half(img), patch_size // 2)
    n = min(len(f1), len(f2))
    f, s = np.concatenate([f1[:n], f2[:n]], 1), s1[:n]
    if select_sharp is not None and n:
        f = f[s > select_sharp * s.max()]
    return f


@lru_cache(maxsize=4)
def load_niqe_params(path: str = PARAMS_PATH):
    if not os.path.exists(path):
        raise FileNotFoundError(f"NIQE parameters not found at {path}; fit them with "
                                "`python -m diffem.metrics.niqe --fit DIR`")
    d = np.load(path)
    return d["mu"], d["cov"], int(d["patch_size"])


def niqe(x, params_path: str = PARAMS_PATH) -> torch.Tensor:
    """NIQE per batch element of (B,C,H,W) (or one (C,H,W)/(H,W)) images in [0,1]. Lower = better.
    NaN for images smaller than one patch (96×96 by default)."""
    mu, cov, p = load_niqe_params(params_path)
    if torch.is_tensor(x) and x.dim() == 4:
        items = list(x)
    else:
        items = [x]
    out = []
    for im in items:
        f = niqe_features(im, p)
        if len(f) == 0:
            out.append(float("nan"))
            continue
        mu_t = f.mean(0)
        cov_t = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros_like(cov)
        d = mu - mu_t
        out.append(float(np.sqrt(max(d @ np.linalg.pinv((cov + cov_t) / 2) @ d, 0.0))))
    return torch.tensor(out, dtype=torch.float64)


class NIQE:
    """deepinv-style callable ``NIQE()(x)`` -> (B,) (lower = more natural)."""

    def __init__(self, params_path: str = PARAMS_PATH):
        self.params_path = params_path

    def __call__(self, x):
        return niqe(x, self.params_path)


def fit_niqe_params(folder: str, out: str = PARAMS_PATH, patch_size: int = 96, sharp_th: float = 0.75,
                    progress: bool = True) -> dict:
    """Fit the pristine MVG on every image of ``folder`` and save (mu, cov, patch_size, n_images,
    n_patches) to ``out`` (.npz, written to a temp name then renamed)."""
    from tqdm import tqdm

    exts = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(exts))
    if not files:
        raise ValueError(f"folder: no images in {folder}")
    feats = []
    for f in tqdm(files, desc="NIQE fit", disable=not progress):
        im = np.asarray(Image.open(os.path.join(folder, f)).convert("RGB"), dtype=np.float64) / 255.0
        feats.append(niqe_features(im.transpose(2, 0, 1), patch_size, select_sharp=sharp_th))
    feats = np.concatenate(feats)
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    atomic_write(out, lambda tmp: np.savez(tmp, mu=mu, cov=cov, patch_size=patch_size, n_images=len(files),
                                           n_patches=len(feats), source=os.path.abspath(folder),
                                           sharp_threshold=sharp_th))
    load_niqe_params.cache_clear()
    return {"n_images": len(files), "n_patches": len(feats), "path": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffem.metrics.niqe",
                                 description="Fit diffem's NIQE pristine model, or score images.")
    ap.add_argument("--fit", metavar="DIR", help="folder of pristine photos (e.g. shared/data/train/CBSD432)")
    ap.add_argument("--out", default=PARAMS_PATH, help="output .npz (default: the packaged params)")
    ap.add_argument("--patch-size", type=int, default=96)
    ap.add_argument("images", nargs="*", help="images to score")
    a = ap.parse_args(argv)
    if a.fit:
        print(fit_niqe_params(a.fit, a.out, a.patch_size))
    for f in a.images:
        im = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0
        print(f"{f}\t{niqe(torch.from_numpy(im.transpose(2, 0, 1))).item():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
