"""Kernel grids as PNG (matplotlib, Agg backend)."""
from __future__ import annotations

import math

import numpy as np

from diffem.files import atomic_write


def save_kernel_grid(kernels, path, ncols: int | None = None, title: str | None = None,
                     labels: list[str] | None = None) -> str:
    """Write (n, k, k) kernels as a grid PNG, each kernel scaled to its own maximum (white = max).

    Written to a temporary file in the target folder, then renamed (never a half-written PNG).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ks = np.asarray(kernels.detach().cpu() if hasattr(kernels, "detach") else kernels, dtype=np.float64)
    if ks.ndim == 2:
        ks = ks[None]
    if ks.ndim != 3 or len(ks) == 0:
        raise ValueError(f"kernels must be (n, k, k) with n >= 1, got shape {ks.shape}")
    n = len(ks)
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < n:
            ax.imshow(ks[i], cmap="gray", vmin=0, vmax=max(ks[i].max(), 1e-12), interpolation="nearest")
            if labels is not None:
                ax.set_title(labels[i], fontsize=7)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_figure(fig, path, dpi: int = 100) -> str:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
