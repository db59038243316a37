"""Physics, schedule and M-step: closed forms, reference fixtures, invariants."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from conftest import levin_kernel
from diffem.mstep import estimate_kernel
from diffem.physics import (Blur, blur, blur_adjoint, blur_valid, center_of_mass, crop_kernel, delta_kernel,
                            kernel_radius, kernel_to_otf, project_simplex, recenter, trim_kernel)
from diffem.schedule import Schedule, space_timesteps

DATA = Path(__file__).parent / "data"


def test_blur_is_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, 17, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 20, 17, generator=g, dtype=torch.float64)
    k = torch.rand(2, 5, 5, generator=g, dtype=torch.float64)      # one kernel per image
    lhs = (blur(x, k) * y).sum()
    rhs = (x * blur_adjoint(y, k)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_blur_matches_scipy_circular_convolution():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 24, 31, generator=g, dtype=torch.float64)
    k = torch.rand(7, 7, generator=g, dtype=torch.float64)
    ours = blur(x, k)
    for c in range(3):
        ref = ndi.convolve(x[0, c].numpy(), k.numpy(), mode="wrap")   # true convolution, origin at centre
        np.testing.assert_allclose(ours[0, c].numpy(), ref, atol=1e-12)


def test_fft_size_is_the_smallest_7_smooth_multiple():
    from diffem.physics import fft_size

    def smooth(m):
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 400):
        for multiple in (1, 16):
            m = fft_size(n, multiple)
            assert m >= n and m % multiple == 0 and smooth(m)
            assert not any(smooth(c) for c in range(-(-n // multiple) * multiple, m, multiple))
    assert fft_size(1281) == 1296 and fft_size(1280) == 1280


def test_trimmed_kernel_is_the_same_valid_blur_on_a_smaller_canvas():
    g = torch.Generator().manual_seed(3)
    k = torch.zeros(15, 15, dtype=torch.float64)
    k[5:9, 7:11] = torch.rand(4, 4, generator=g, dtype=torch.float64)   # off-centre: rows 5..8, cols 7..10
    k /= k.sum()
    assert kernel_radius(k) == 3 and kernel_radius(delta_kernel(9)) == 0
    t = trim_kernel(k)
    assert t.shape == (7, 7) and float(t.sum()) == pytest.approx(1.0)   # centre (7, 7) kept: ⌊7/2⌋ = 3
    x = torch.rand(1, 3, 40, 36, generator=g, dtype=torch.float64)
    assert torch.allclose(blur_valid(x, k), blur_valid(x[..., 4:-4, 4:-4], t), atol=1e-12)


def test_blur_valid_matches_circular_interior():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 30, 30, generator=g, dtype=torch.float64)
    k = torch.rand(5, 5, generator=g, dtype=torch.float64)
    v = blur_valid(x, k)
    assert v.shape[-2:] == (26, 26)
    assert torch.allclose(v, blur(x, k)[..., 2:-2, 2:-2], atol=1e-12)


def test_valid_blur_owns_canvas_mask_and_crop_and_is_exact_on_observed_pixels():
    """A 'valid'-blurred y: the physics' canvas exceeds y by ⌊k/2⌋ on every side (rounded up to the
    multiple), A(scene on the canvas) = y exactly (no wrap-around reaches the observed pixels),
    impute() keeps y there and the circular blur elsewhere, and crop() is the inverse of the canvas."""
    g = torch.Generator().manual_seed(3)
    k = torch.rand(7, 7, generator=g, dtype=torch.float64)
    k /= k.sum()
    scene = torch.rand(1, 3, 41, 52, generator=g, dtype=torch.float64)
    y = blur_valid(scene, k)                                        # (35, 46)
    physics = Blur.for_measurement(y, k, 0.0, "valid", multiple=8)
    top, left, h, w = physics.box
    assert physics.canvas_shape == (48, 56) and (h, w) == (35, 46) and top >= 3 and left >= 3
    assert 48 - top - h >= 3 and 56 - left - w >= 3
    canvas = physics.canvas(y)
    assert canvas.shape[-2:] == (48, 56) and torch.equal(physics.crop(canvas), y)
    assert torch.equal(canvas[..., :top, left:left + w], y[..., :1, :].expand(-1, -1, top, -1))  # edge replication
    mask = physics.mask
    assert int(mask.sum()) == h * w and bool(mask[..., top, left]) and not bool(mask[..., top - 1, left])
    x = torch.rand(1, 3, 48, 56, generator=g, dtype=torch.float64)
    x[..., top - 3:top - 3 + 41, left - 3:left - 3 + 52] = scene     # the rest of the canvas: anything
    assert torch.allclose(physics.A(x), y, atol=1e-12)
    imputed = physics.impute(y, x)
    assert torch.equal(physics.crop(imputed), y)
    assert torch.equal(imputed[~mask.expand_as(imputed)], physics.convolve(x)[~mask.expand_as(imputed)])
    circular = Blur(k)
    assert circular.impute(y, x) is y and circular.crop(x) is x and circular.canvas(y) is y


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_adjoint_and_with_kernel_make_a_new_physics(boundary):
    g = torch.Generator().manual_seed(4)
    k = torch.rand(5, 5, generator=g, dtype=torch.float64)
    physics = Blur.for_measurement(torch.zeros(1, 2, 13, 17), k / k.sum(), 0.1, boundary)
    x = torch.randn((1, 2) + physics.canvas_shape, generator=g, dtype=torch.float64)
    r = torch.randn(1, 2, 13, 17, generator=g, dtype=torch.float64)
    assert torch.allclose((physics.A(x) * r).sum(), (x * physics.A_adjoint(r)).sum(), rtol=1e-12)
    k2 = delta_kernel(5, dtype=torch.float64)
    other = physics.with_kernel(k2)
    assert other is not physics and physics.kernel is not k2 and other.kernel is k2
    assert (other.boundary, other.sigma, other.canvas_shape) == (boundary, 0.1, physics.canvas_shape)
    assert torch.allclose(other.A(x), physics.crop(x))                 # a delta kernel: A = crop


def test_pigdm_vector_is_the_dense_closed_form():
    """Blur.pigdm_vector = Hᵀ(r²HHᵀ + σ²I)⁻¹(y − Hx) with dense matrices (circular H)."""
    g = torch.Generator().manual_seed(5)
    H = W = 6
    k = torch.rand(3, 3, generator=g, dtype=torch.float64)
    k /= k.sum()
    x, y = (torch.rand(1, 1, H, W, generator=g, dtype=torch.float64) for _ in range(2))
    Hm = torch.stack([blur(e.view(1, 1, H, W), k).flatten() for e in torch.eye(H * W, dtype=torch.float64)], 1)
    r2, sigma = 0.3, 0.05
    dense = Hm.T @ torch.linalg.solve(r2 * Hm @ Hm.T + sigma ** 2 * torch.eye(H * W, dtype=torch.float64),
                                      (y - blur(x, k)).flatten())
    assert torch.allclose(Blur(k, sigma).pigdm_vector(x, y, r2).flatten(), dense, atol=1e-10)


def test_delta_kernel_is_identity_and_otf_roundtrip():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(blur(x, delta_kernel(9, dtype=torch.float64)), x, atol=1e-12)
    k = torch.rand(9, 9, dtype=torch.float64)
    z = torch.fft.irfft2(kernel_to_otf(k, (16, 16)), s=(16, 16))
    assert torch.allclose(crop_kernel(z, 9), k, atol=1e-12)


def test_shift_convention_centre_is_origin():
    # A kernel whose only mass is one pixel right of the centre shifts the image right by one.
    k = torch.zeros(5, 5, dtype=torch.float64)
    k[2, 3] = 1
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(blur(x, k), torch.roll(x, 1, dims=-1))


def test_projection_and_recentring():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(2, 11, 11, generator=g)
    p = project_simplex(k)
    assert (p >= 0).all() and torch.allclose(p.sum((-2, -1)), torch.ones(2))
    off = torch.zeros(33, 33)
    off[5:9, 20:27] = 1.0
    off = off / off.sum()
    c = recenter(off)
    assert torch.allclose(center_of_mass(c), torch.tensor([16.0, 16.0]), atol=0.05)
    assert (c >= 0).all() and abs(float(c.sum()) - 1) < 1e-6
    # a sub-pixel shift of an already centred kernel changes it little
    lk = levin_kernel(4)
    assert (recenter(lk) - lk).abs().max() < 1e-4


def test_euclidean_simplex_projection_is_the_nearest_point():
    from diffem.physics import project_simplex_euclidean

    g = torch.Generator().manual_seed(8)
    v = torch.randn(7, 7, generator=g, dtype=torch.float64) * 0.1
    p = project_simplex_euclidean(v)
    assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12
    # nearer to v than any random point of the simplex, and a fixed point on the simplex
    for _ in range(200):
        q = project_simplex(torch.rand(7, 7, generator=g, dtype=torch.float64) ** 4)
        assert (v - p).norm() <= (v - q).norm() + 1e-12
    assert torch.allclose(project_simplex_euclidean(p), p, atol=1e-12)
    # closed form for two entries: (a, b) -> ((1 + a - b)/2, (1 - a + b)/2) when both stay positive;
    # batched: one projection per (k, k) slice
    two = project_simplex_euclidean(torch.tensor([[[0.7, 0.9]], [[2.0, -1.0]]], dtype=torch.float64))
    assert torch.allclose(two, torch.tensor([[[0.4, 0.6]], [[1.0, 0.0]]], dtype=torch.float64), atol=1e-12)


def test_l2_prox_is_the_projection_of_the_shrunk_kernel():
    """Eq. 23 with Φ = ‖K‖²: argmin λ‖K‖² + β/2‖K − Z‖² on the simplex = Π(βZ/(β + 2λ)); for a Dirac Z
    and λ = β: Π(Z/3) = 1/3 + τ at the centre and τ elsewhere, with 25 entries summing to 1: τ = 2/75."""
    from diffem.mstep import prior_step

    z = delta_kernel(5, dtype=torch.float64)
    out = prior_step(z, "l2", lam=1e5, beta=1e5)
    expected = torch.full((5, 5), 2 / 75, dtype=torch.float64)
    expected[2, 2] += 1 / 3
    assert torch.allclose(out, expected, atol=1e-12)


def test_noisy_measurement_statistics():
    x = torch.full((1, 3, 64, 64), 0.5)
    y = Blur(delta_kernel(5), sigma=0.1)(x, torch.Generator().manual_seed(0))
    assert abs(float((y - x).std()) - 0.1) < 0.005       # unclipped Gaussian noise of std σ


@pytest.mark.parametrize("spacing", ["100", "50", "20", "ddim50", "1000"])
def test_schedule_matches_guided_diffusion_reference(spacing):
    ref = json.loads((DATA / "core_ddpm_schedule_reference.json").read_text())[f"respaced_{spacing}"]
    s = Schedule(spacing)
    assert s.timesteps == ref["timesteps"]
    np.testing.assert_allclose(s.betas, ref["betas"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.alphas_cumprod, ref["alphas_cumprod"], rtol=0, atol=1e-15)


def test_schedule_sections_and_errors():
    assert space_timesteps(100, "10,10") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50, 55, 61, 66, 72, 77, 83, 88, 94, 99]
    with pytest.raises(ValueError, match="steps"):
        space_timesteps(1000, "ddim999")


def test_ddim_eta1_equals_ddpm_variance():
    s = Schedule("50")
    x_t, x0, z = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    i = 30
    # Same mean and same noise std: η = 1 DDIM and the fixed-small DDPM step are the same Gaussian.
    ddim_mean = s.ddim_step(x_t, x0, i, None, eta=1.0)
    ddpm_mean = s.ddpm_step(x_t, x0, i, None)
    assert torch.allclose(ddim_mean, ddpm_mean, atol=1e-10)
    assert torch.allclose(s.ddim_step(x_t, x0, i, z, eta=1.0) - ddim_mean,
                          np.sqrt(s.posterior_variance[i]) * z, atol=1e-10)


@pytest.mark.parametrize("channel_mode", ["joint", "average"])
def test_mstep_recovers_levin_kernel_from_sharp_image(crop128, channel_mode):
    """Issue acceptance: λ = 0, σ = 5/255, 128×128 CBSD68 crop, 33×33 Levin kernel: MSE ≤ 2e-5."""
    k = levin_kernel(4)
    y = Blur(k, 5 / 255)(crop128, torch.Generator().manual_seed(0))
    est = estimate_kernel(crop128, y, 5 / 255, delta_kernel(33), regulariser="none", lam=0,
                          channel_mode=channel_mode)
    mse = float(((est - k) ** 2).mean())
    start = float(((delta_kernel(33) - k) ** 2).mean())
    assert est.shape == (33, 33) and (est >= 0).all() and abs(float(est.sum()) - 1) < 1e-5
    assert mse <= 2e-5, mse
    assert mse < start / 50


def test_mstep_regularisers_and_pigdm_damping(crop128):
    k = levin_kernel(2)
    y = Blur(k, 10 / 255)(crop128, torch.Generator().manual_seed(1))
    d = delta_kernel(33)
    for reg in ("l2", "l1"):
        est = estimate_kernel(crop128, y, 10 / 255, d, regulariser=reg, lam=1.0)
        assert float(((est - k) ** 2).mean()) < float(((d - k) ** 2).mean()) / 10
    # the ℓ2 prox is not a no-op: a strong λ spreads the kernel (smaller ‖k‖²)
    weak, strong = (estimate_kernel(crop128, y, 10 / 255, d, regulariser="l2", lam=lam) for lam in (1e-3, 1e4))
    assert float((strong**2).sum()) < 0.9 * float((weak**2).sum())
    # A trivial PnP denoiser (identity) equals no regularisation.
    ident = estimate_kernel(crop128, y, 10 / 255, d, regulariser="pnp", denoiser=lambda z, s: z)
    none = estimate_kernel(crop128, y, 10 / 255, d, regulariser="none")
    assert torch.allclose(ident, none, atol=1e-7)
    # Eq. 33: E‖k⊛x − y‖² gains r²·C·N·‖k‖², an ℓ2 penalty: the damped kernel is more spread out.
    norms = [float((estimate_kernel(crop128, y, 10 / 255, d, regulariser="none", r2=r2) ** 2).sum())
             for r2 in (0.0, 1e-3, 1e-1)]
    assert norms[0] > norms[1] > norms[2]
    with pytest.raises(ValueError, match="regulariser"):
        estimate_kernel(crop128, y, 0.1, d, regulariser="tv")
    with pytest.raises(ValueError, match="denoiser"):
        estimate_kernel(crop128, y, 0.1, d, regulariser="pnp")


def test_uninformative_x0_keeps_the_kernel_and_eq33_damping_flattens_it():
    """Fast EM's first M-steps see an x̂0 without structure. For a constant x̂0 (with y's mean) the data
    term says nothing about the kernel: by default (the authors' code) the M-step leaves it unchanged.
    Eq. 33's damping then shrinks every non-zero frequency, and the projection returns the uniform
    kernel, the minimum-energy one: why the damping is off by default."""
    from diffem.mstep import KernelMStep

    k = levin_kernel(3)
    y = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    y = y - y.mean() + 0.4
    x0 = torch.full((1, 3, 96, 96), 0.4)
    physics = Blur(k, 10 / 255)
    kept = KernelMStep(hqs=dict(regulariser="none"), recenter=False)(physics, y, x0, r2=0.05)
    assert torch.allclose(kept, k, atol=1e-6)
    damped = KernelMStep(hqs=dict(regulariser="none", n_iter=60), pigdm_damping=True,  # 60: converged to 1e-6
                         recenter=False)(physics, y, x0, r2=0.05)
    assert torch.allclose(damped, torch.full_like(k, 1 / k.numel()), atol=1e-6)


def test_support_data_step_equals_full_fft_eq24():
    from diffem.mstep import SupportDataStep, data_terms, hqs_data_step

    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 40, 37, generator=g)
    y = torch.rand(1, 3, 40, 37, generator=g)
    k = project_simplex(torch.rand(11, 11, generator=g))
    for mode in ("joint", "average"):
        num, den = data_terms(x, y, r2=1e-3, channel_mode=mode)
        full = hqs_data_step(num, den, (40, 37), k, alpha=3.0)
        fast = SupportDataStep(num, den, (40, 37), 11, alpha=3.0)(k)
        assert torch.allclose(full, fast, atol=1e-6 * float(full.abs().max()))
