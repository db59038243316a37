"""FID (Heusel et al. 2017) with a user-supplied Inception TorchScript file (nothing is downloaded).

Use clean-fid's ``inception-2015-12-05.pt`` (TorchScript of the TF-FID Inception v3; ~95 MB). It is
loaded with ``torch.jit.load`` (no torchvision) and called on images in [0, 255], resized inside to
299×299, returning 2048-d pool features. Any TorchScript module mapping (B,3,H,W) [0,255] images to
(B, D) features works. FID over a handful of images is dominated by estimation noise: report it only
for hundreds of images or more.
"""
from __future__ import annotations

import os

import numpy as np
import torch


class InceptionFeatures:
    def __init__(self, path: str, device="cpu"):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"Inception TorchScript file not found: {path!r} "
                                    "(clean-fid's inception-2015-12-05.pt)")
        self.model = torch.jit.load(path, map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """x: (B,3,H,W) in [0,1] -> (B, D) float64 features."""
        x = (x.float().clamp(0, 1) * 255.0).to(self.device)
        try:
            f = self.model(x, return_features=True)  # clean-fid's module signature
        except (RuntimeError, TypeError):
            f = self.model(x)
        return f.reshape(x.shape[0], -1).double().cpu().numpy()


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})."""
    from scipy import linalg

    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(cov1.shape[0])
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = covmean.real
    d = mu1 - mu2
    return float(d @ d + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("FID needs at least 2 images per set")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def fid(images_a, images_b, inception_path: str, batch_size: int = 16, device="cpu") -> float:
    """FID between two iterables of (3,H,W) images in [0,1] (tensors)."""
    net = InceptionFeatures(inception_path, device)

    def feats(images):
        out, batch = [], []
        for im in images:
            batch.append(im)
            if len(batch) == batch_size:
                out.append(net(torch.stack(batch)))
                batch = []
        if batch:
            out.append(net(torch.stack(batch)))
        return np.concatenate(out)

    return fid_from_features(feats(images_a), feats(images_b))
