"""Loaders for the public kernel sets (Levin09, USRNet, Lai16), as (n, size, size) centred kernels.

Levin09, USRNet_kernels12 and Lai16_uniform ship with diffem (``kernels/data``, sources and terms in
its README); other sets are read from a folder (``root=``, or ``$DIFFEM_KERNELS``) holding
``<set>/npy/*.npy`` as the project's shared data does. The ``.npy`` files are MATLAB-``conv2``
convolution kernels and diffem's blur is a true convolution too, so they are used as they are (no
flip). Each kernel is zero-padded to ``size`` with its centre of mass moved to (⌊size/2⌋, ⌊size/2⌋):
an integer placement, then (``subpixel=True``) a sub-pixel bilinear shift (exact centre of mass, no
ringing).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from diffem.kernels.generators import splat
from diffem.physics import center_of_mass

BUNDLED = Path(__file__).resolve().parent / "data"
BUNDLED_SETS = ("Levin09", "USRNet_kernels12", "Lai16_uniform")
# the one alias table (case-insensitive): name -> set folder
KERNEL_SETS = {
    "levin09": "Levin09", "levin": "Levin09",
    "usrnet_kernels12": "USRNet_kernels12", "usrnet12": "USRNet_kernels12", "usrnet": "USRNet_kernels12",
    "usrnet_large": "USRNet_large",
    "lai16_uniform": "Lai16_uniform", "lai-uniform": "Lai16_uniform", "lai": "Lai16_uniform",
    "lai16_real_estimates": "Lai16_real_estimates",
}


def kernel_set(name: str) -> str | None:
    """The set folder a name refers to (any case), or None."""
    return KERNEL_SETS.get(str(name).lower())


def _npy_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"), key=lambda p: (len(p.stem), p.stem)) if folder.is_dir() else []


def find_kernel_files(name: str, root=None) -> list[Path]:
    """The .npy files of a set. ``root`` may be the kernels folder (holding <set>/npy), the set's
    folder, or a folder of .npy files; without it: ``$DIFFEM_KERNELS``, then the shipped sets."""
    set_name = kernel_set(name)
    if set_name is None:
        raise ValueError(f"name: unknown kernel set {name!r} (choose from {', '.join(sorted(KERNEL_SETS))})")
    if root is not None:
        roots = [Path(root)]
    else:
        roots = [Path(os.environ["DIFFEM_KERNELS"])] if os.environ.get("DIFFEM_KERNELS") else []
        if set_name in BUNDLED_SETS:
            roots.append(BUNDLED)
    for r in roots:
        for cand in (r / set_name / "npy", r / set_name, r / "npy", r):
            files = _npy_files(cand)
            if files:
                return files
    where = ", ".join(map(str, roots)) or "no folder (pass root= / --kernel-root, or set DIFFEM_KERNELS)"
    raise FileNotFoundError(f"kernel set {set_name!r}: no .npy files under {where}")


def place_kernel(k: np.ndarray | torch.Tensor, size: int, subpixel: bool = True) -> torch.Tensor:
    """A (h, w) kernel zero-padded (or cropped of empty borders) to (size, size), centred."""
    k = torch.as_tensor(np.asarray(k, dtype=np.float64))
    if k.dim() != 2:
        raise ValueError(f"kernel must be 2-D, got shape {tuple(k.shape)}")
    if not torch.isfinite(k).all():
        raise ValueError("kernel has non-finite values")
    k = k.clamp_min(0)
    if k.sum() <= 0:
        raise ValueError("kernel is all zero")
    k = k / k.sum()
    # drop empty borders (an odd-sized file kernel may carry zero margins)
    rows = torch.nonzero(k.sum(1) > 0).flatten()
    cols = torch.nonzero(k.sum(0) > 0).flatten()
    k = k[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = k.shape
    if h > size or w > size:
        raise ValueError(f"size: a {h}x{w} kernel does not fit in {size}x{size}")
    com = center_of_mass(k)
    c = size // 2
    r0 = int(round(c - com[0].item()))
    c0 = int(round(c - com[1].item()))
    r0 = min(max(r0, 0), size - h)
    c0 = min(max(c0, 0), size - w)
    out = torch.zeros(size, size, dtype=torch.float64)
    out[r0:r0 + h, c0:c0 + w] = k
    if subpixel:
        # the remaining sub-pixel offset, by bilinear splatting: it keeps the centre of mass exactly
        # and makes no ringing (a Fourier shift would, and clipping it moves the centre again)
        shift = (c - center_of_mass(out)).numpy()
        a = out.numpy()
        rr, cc = np.nonzero(a > 0)
        pts = np.stack([rr + shift[0], cc + shift[1]], axis=1)
        moved = splat(pts, (size, size), a[rr, cc])
        if moved.sum() > 0.999:  # nothing fell off the support
            out = torch.from_numpy(moved / moved.sum())
    return out.float()


def load_kernel_set(name: str, size: int, root=None, subpixel: bool = True, too_large: str = "error"):
    """Kernels of a public set as a (n, size, size) float32 tensor (sum 1, centred).

    name: Levin09 (levin), USRNet_kernels12 (usrnet), Lai16_uniform (lai-uniform), USRNet_large,
    Lai16_real_estimates, in any case. root: the folder holding the sets (default: $DIFFEM_KERNELS,
    then the shipped sets). too_large: "error" (ValueError) or "skip" for kernels larger than ``size``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
        raise ValueError(f"size must be an integer >= 3, got {size!r}")
    if too_large not in ("error", "skip"):
        raise ValueError(f"too_large must be 'error' or 'skip', got {too_large!r}")
    out, names = [], []
    for f in find_kernel_files(name, root):
        k = np.load(f)
        try:
            out.append(place_kernel(k, size, subpixel=subpixel))
            names.append(f.stem)
        except ValueError:
            if too_large == "error":
                raise
    if not out:
        raise ValueError(f"size: no kernel of set {name!r} fits in {size}x{size}")
    result = torch.stack(out)
    result.names = names  # kept for labels; a plain attribute on the tensor
    return result
