"""diffem: blind image deblurring with diffusion priors (Fast Diffusion EM and friends).

    import diffem
    result = diffem.deblur(y, sigma=10/255)          # y: (3,H,W) in [0,1]
    result.image, result.kernel
"""
__version__ = "0.1.0"

from diffem.api import Result, deblur, restore  # noqa: E402
from diffem.priors import Prior, load_prior  # noqa: E402

__all__ = ["Prior", "Result", "deblur", "load_prior", "restore", "__version__"]
