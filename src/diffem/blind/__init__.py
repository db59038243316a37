"""Blind kernel estimation beyond the paper, and diffem's default blind method (``multiscale-pnp``).

* ``steps``: the ℓ0 latent image, the non-negative least-squares kernel step, kernel cleaning;
* ``multiscale``: coarse-to-fine estimation with those steps;
* ``safeguard``: the data-fit check of a kernel and the conservative fallback;
* ``pipeline``: pre-denoise → kernel → PnP-HQS restoration → kernel refinement → safeguard (``deblur_multiscale``).
"""
from diffem.blind.multiscale import estimate_kernel_multiscale
from diffem.blind.pipeline import deblur_multiscale, estimate_kernel
from diffem.blind.safeguard import check_kernel

__all__ = ["check_kernel", "deblur_multiscale", "estimate_kernel", "estimate_kernel_multiscale"]
