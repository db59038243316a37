"""diffem: blind image deblurring with diffusion priors (Fast Diffusion EM and friends)."""
__version__ = "0.1.0"

from diffem.priors import Prior, load_prior  # noqa: E402

__all__ = ["Prior", "load_prior", "__version__"]
