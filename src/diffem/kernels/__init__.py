"""Blur kernels: random generators (camera shake, hand-shake model, Gaussian, linear motion),
loaders for public kernel sets, and the Plug-&-Play kernel denoiser (``load_kernel_denoiser``)."""
from diffem.kernels.generators import (
    GENERATORS,
    GaussianBlurGenerator,
    HandShakeGenerator,
    KernelGenerator,
    LinearMotionGenerator,
    MixtureGenerator,
    MotionBlurGenerator,
    gaussian_kernel,
    generate_kernels,
    hand_shake_kernel,
    linear_motion_kernel,
    make_generator,
    motion_blur_kernel,
    training_mixture,
)
from diffem.kernels.loaders import KERNEL_SETS, load_kernel_set, place_kernel


def __getattr__(name):  # the denoiser pulls in torch.nn only when asked for
    if name in ("KernelDenoiser", "load_kernel_denoiser", "save_kernel_denoiser"):
        from diffem.kernels import denoiser
        return getattr(denoiser, name)
    raise AttributeError(f"module 'diffem.kernels' has no attribute {name!r}")


__all__ = [
    "GENERATORS", "KERNEL_SETS", "GaussianBlurGenerator", "HandShakeGenerator", "KernelGenerator",
    "LinearMotionGenerator", "MixtureGenerator", "MotionBlurGenerator", "gaussian_kernel", "generate_kernels",
    "hand_shake_kernel", "linear_motion_kernel", "load_kernel_set", "make_generator", "motion_blur_kernel",
    "place_kernel", "training_mixture", "KernelDenoiser", "load_kernel_denoiser", "save_kernel_denoiser",
]
