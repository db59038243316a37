"""Tests of diffem.metrics: closed forms, agreement with scikit-image, invariants."""
import math

import numpy as np
import pytest
import torch

from diffem.metrics import (blur_strength, kernel_mse, kernel_mse_aligned, mse, niqe, psnr,
                            psnr_sample_average, reblur_error, sharpness_index, ssim)
from diffem.metrics.kernel import shift_zero
from diffem.physics import Blur, blur


def _smooth_image(seed=0, C=3, H=64, W=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, C, H // 8, W // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.rand(1, C, H, W, generator=g)).clamp(0, 1).double()


def _gauss_kernel(size=9, s=1.5):
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (r / s) ** 2)
    k = g[:, None] * g[None]
    return k / k.sum()


def test_psnr_constant_offset():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for d in (0.1, 0.01):
        # MSE of a constant offset d is d², so PSNR = -20 log10 d exactly.
        assert torch.allclose(psnr(x + d, x), torch.full((2,), -20 * math.log10(d), dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()
    assert psnr(x[0] + 0.1, x[0]).shape == (1,)


def test_psnr_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_psnr_sample_average_beats_single_sample():
    x = torch.rand(3, 32, 32, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    samples = x + 0.1 * torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    sa = psnr_sample_average(samples, x)
    one = psnr(samples[:1], x)
    # averaging 8 independent errors divides the MSE by ~8 (+9 dB)
    assert sa.item() - one.item() == pytest.approx(10 * math.log10(8), abs=1.0)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    for C, H, W in ((3, 40, 50), (1, 32, 32)):
        x = torch.rand(C, H, W, generator=g, dtype=torch.float64)
        y = (x + 0.2 * torch.randn(C, H, W, generator=g, dtype=torch.float64)).clamp(0, 1)
        ref = structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert abs(ssim(y, x).item() - ref) < 1e-3
    z = _smooth_image()
    assert ssim(z, z).item() == pytest.approx(1.0)


def test_kernel_mse_shifted_copy_is_zero_after_alignment():
    k = torch.zeros(15, 15, dtype=torch.float64)
    k[5:10, 6:9] = torch.rand(5, 3, dtype=torch.float64)
    k /= k.sum()
    shifted = shift_zero(k, 2, -3)           # support stays inside the box: no mass lost
    assert shifted.sum().item() == pytest.approx(1.0)
    assert kernel_mse(shifted, k).item() > 1e-4
    err, s = kernel_mse_aligned(shifted, k, return_shift=True)
    assert err.item() == pytest.approx(0.0, abs=1e-20)
    assert s[0].tolist() == [-2, 3]
    # outside the ±k/4 window (= ±3 here) the shift is not searched
    far = shift_zero(k, 0, 5)
    assert kernel_mse_aligned(far, k).item() > 1e-5
    assert kernel_mse(k, k).item() == 0.0


def test_reblur_error_true_image_and_kernel_is_zero_in_expectation():
    x = _smooth_image(2, H=96, W=96)
    k = _gauss_kernel()
    sigma = 10 / 255
    errs = []
    for seed in range(4):
        y = Blur(k, sigma)(x, generator=torch.Generator().manual_seed(seed))
        errs.append(reblur_error(x, k, y, sigma).item())
    # E[mean(n²)] = σ²; the std of one estimate is σ² sqrt(2/N) ≈ 1e-5 for N = 27648
    assert abs(np.mean(errs)) < 1e-5
    # a wrong kernel (no blur) leaves a clearly positive error
    y = Blur(k, sigma)(x, generator=torch.Generator().manual_seed(0))
    assert reblur_error(x, torch.eye(1, dtype=torch.float64), y, sigma).item() > 1e-4


def test_no_reference_metrics_order_sharp_and_blurred():
    x = _smooth_image(3, H=96, W=96)
    # add edges so that the image has a clear sharp structure
    x[..., 30:60, 20:70] = 0.9
    xb = blur(x, _gauss_kernel(15, 2.5))
    assert blur_strength(xb).item() > blur_strength(x).item()
    assert sharpness_index(x).item() > sharpness_index(xb).item()
    assert 0.0 <= blur_strength(x).item() <= 1.0


def test_niqe_packaged_params_rank_blur_and_small_images():
    x = _smooth_image(4, H=192, W=192)
    x[..., 40:150, 60:120] += 0.3
    x = x.clamp(0, 1)
    assert niqe(blur(x, _gauss_kernel(21, 4.0))).item() > niqe(x).item()
    assert math.isnan(niqe(torch.rand(1, 3, 64, 64)).item())  # smaller than one 96×96 patch


def test_gradient_sparsity_of_a_step_edge_and_of_its_box_blur():
    """A vertical unit step in an H×W image: H gradients of 1 among n = H(W−1) + (H−1)W, so ℓ1/(√n ℓ2) = √(H/n);
    blurred by a w-px box, each row holds w gradients of 1/w: ℓ1 = H, ℓ2 = √(H/w), √w times larger."""
    from diffem.metrics import gradient_sparsity

    H, W, w = 20, 40, 5
    step = torch.zeros(1, 1, H, W, dtype=torch.float64)
    step[..., 20:] = 1.0
    ramp = step.clone()
    ramp[..., 20 - w + 1:20] = torch.arange(1, w, dtype=torch.float64) / w    # the step blurred by a w-box
    n = H * (W - 1) + (H - 1) * W
    assert math.isclose(float(gradient_sparsity(step)), math.sqrt(H / n), rel_tol=1e-12)
    assert math.isclose(float(gradient_sparsity(ramp)), math.sqrt(w * H / n), rel_tol=1e-12)


def test_mse_batch():
    x = torch.zeros(3, 1, 4, 4)
    y = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4)
    assert mse(x, y).tolist() == [0.0, 1.0, 4.0]


def test_lpips_with_random_backbone_file(tmp_path):
    from diffem.metrics.lpips import LPIPS, _alex_features

    torch.manual_seed(0)
    feats = _alex_features()
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "alex.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               tmp_path / "lin.pth")
    m = LPIPS(str(tmp_path / "alex.pth"), "alex", lin_path=str(tmp_path / "lin.pth"))
    x = torch.rand(2, 3, 64, 64)
    d = m(x, x)
    assert d.shape == (2,) and torch.all(d == 0)
    assert torch.all(m(x, torch.rand(2, 3, 64, 64)) > 0)
    with pytest.raises(FileNotFoundError):
        LPIPS(str(tmp_path / "missing.pth"))


def test_fid_identical_sets_is_zero_and_shift_is_detected():
    from diffem.metrics.fid import fid_from_features

    g = np.random.default_rng(0)
    f = g.normal(size=(200, 4))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    # a mean shift of 1 in each of 4 dims adds ‖Δμ‖² = 4
    assert fid_from_features(f, f + 1.0) == pytest.approx(4.0, abs=1e-6)
