"""Evaluation metrics (deepinv-like: functions and callables returning one value per batch element).

Full reference: ``psnr``, ``ssim`` (Gaussian 11×11, σ=1.5, scikit-image/Wang convention),
``psnr_sample_average`` ("PSNR SA"), ``mse``.
Kernel / consistency: ``kernel_mse``, ``kernel_mse_aligned`` (best integer shift), ``error_ratio`` (Levin's
ER: what the kernel costs the restored image, each restoration at its best translation),
``mse_up_to_shift`` / ``psnr_up_to_shift`` (that comparison: Levin et al.'s comp_upto_shift), ``reblur_error``.
No reference: ``blur_strength`` (Crété 2007, higher = blurrier), ``sharpness_index`` (Blanchet-Moisan,
higher = sharper), ``gradient_sparsity`` (Krishnan 2011 ℓ1/ℓ2, lower = sharper), ``niqe`` (own fit on CBSD432, lower = better).
With user-supplied weights only: ``LPIPS`` (diffem.metrics.lpips), ``fid`` (diffem.metrics.fid).
Cost: ``measure`` (time, peak memory).
"""
from diffem.metrics.full_reference import PSNR, SSIM, mse, psnr, psnr_sample_average, ssim
from diffem.metrics.kernel import (error_ratio, kernel_mse, kernel_mse_aligned, mse_up_to_shift, psnr_up_to_shift,
                                   reblur_error)
from diffem.metrics.niqe import NIQE, niqe
from diffem.metrics.no_reference import BlurStrength, SharpnessIndex, blur_strength, gradient_sparsity, sharpness_index
from diffem.metrics.runtime import measure, peak_rss_mb

__all__ = ["PSNR", "SSIM", "mse", "psnr", "psnr_sample_average", "ssim", "kernel_mse", "kernel_mse_aligned", "error_ratio",
           "mse_up_to_shift", "psnr_up_to_shift", "reblur_error", "NIQE", "niqe", "BlurStrength", "SharpnessIndex", "blur_strength", "gradient_sparsity",
           "sharpness_index", "measure", "peak_rss_mb"]
