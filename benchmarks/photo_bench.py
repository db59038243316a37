"""`diffem bench` with one more method, ``photo``: the photo pipeline that `diffem deblur` runs
(``diffem.realphoto.deblur_photo``, every CLI default, σ estimated), on the bench's splits.

    python benchmarks/photo_bench.py --protocol tune-real --boundary valid --methods photo,blurry \
        --out runs/s19/pb_tune_real --no-reference-metrics

Every argument goes to `diffem bench`. The pipeline picks its own support (up to 75 px); its kernel is
cut (around its centre) or zero-padded to the bench's size for the kernel metrics and Levin's ER.
"""
import sys

import torch

from diffem.benchmark.data import pad_kernel
from diffem.benchmark.methods import register_method
from diffem.cli import main
from diffem.realphoto.pipeline import deblur_photo


def _to_size(k: torch.Tensor, n: int) -> torch.Tensor:
    """k (s, s) on an n×n support, its centre ⌊s/2⌋ kept at ⌊n/2⌋; renormalised if cut."""
    s = k.shape[-1]
    if s > n:
        a = s // 2 - n // 2
        k = k[a:a + n, a:a + n]
        return k / k.sum().clamp_min(1e-12)
    return torch.from_numpy(pad_kernel(k.numpy(), n))


def photo(y, sigma, kernel_size, true_kernel=None, seed=0, progress=False, boundary="valid", **opts):
    """diffem.realphoto.deblur_photo, every default (σ estimated) — what `diffem deblur` writes"""
    res = deblur_photo((y[0] if y.dim() == 4 else y).clamp(0, 1), seed=seed, progress=False, **opts)
    info = {**res.info, "restore": res.restore, "support": res.kernel.shape[-1]}
    return res.image, _to_size(res.kernel, kernel_size), {"info": info, "timings": res.timings}


if __name__ == "__main__":
    register_method("photo", photo, photo.__doc__)
    sys.argv = ["diffem", "bench", *sys.argv[1:]]
    sys.exit(main())
