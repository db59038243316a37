"""Samplers against closed-form truths (Gaussian prior), Eq. 17 against a dense evaluation,
Fast EM / Diffusion EM behaviour, determinism and input validation."""
import numpy as np
import pytest
import torch

import diffem
import diffem.samplers as samplers
from diffem.guidance import pigdm_guidance, pigdm_r2
from diffem.mstep import KernelMStep
from diffem.physics import Blur, blur, blur_valid, delta_kernel, recenter
from diffem.priors import load_prior
from diffem.rng import ParticleNoise
from diffem.schedule import Schedule


def _kernel7() -> torch.Tensor:
    k = torch.zeros(7, 7)
    k[3, 1:6] = 1
    k[1:5, 5] += 0.5
    return recenter(k / k.sum())


def _rms(a: torch.Tensor) -> float:
    return float(a.pow(2).mean().sqrt())


def _dense_blur_matrix(k: torch.Tensor, H: int, W: int) -> torch.Tensor:
    cols = [blur(e.view(1, 1, H, W), k).flatten() for e in torch.eye(H * W, dtype=k.dtype)]
    return torch.stack(cols, dim=1)


def test_pigdm_gradient_matches_dense_eq17():
    """ΠGDM's Fourier closed form = Eq. 17 with dense matrices, (∂x̂0/∂x_t)ᵀ Hᵀ(r²HHᵀ+σ²I)⁻¹(y − Hx̂0)."""
    torch.manual_seed(0)
    H = W = 8
    k = torch.rand(3, 3, dtype=torch.float64)
    k = k / k.sum()
    A = torch.randn(H * W, H * W, dtype=torch.float64) / 8     # a nonlinear "denoiser" x̂0(x_t)
    x_t = torch.randn(1, 1, H, W, dtype=torch.float64, requires_grad=True)
    denoise = lambda z: torch.tanh(A @ z.flatten()).view(1, 1, H, W) * 0.5 + 0.5
    x0 = denoise(x_t)
    y = torch.rand(1, 1, H, W, dtype=torch.float64)
    sched, i, sigma = Schedule("100"), 60, 0.05
    ours = pigdm_guidance(x_t, denoise(x_t), y, Blur(k, sigma), sched, i)
    r2 = pigdm_r2(sched, i)
    zeta = np.sqrt(sched.alphas_cumprod[i]) * r2 / np.sqrt(1 + sched.posterior_variance[i])
    Hm = _dense_blur_matrix(k, H, W)
    v = Hm.T @ torch.linalg.solve(r2 * Hm @ Hm.T + sigma**2 * torch.eye(H * W, dtype=torch.float64),
                                  (y - blur(x0, k)).flatten().detach())
    (dense,) = torch.autograd.grad(x0.flatten(), x_t, grad_outputs=v)
    rel = float((ours - zeta * dense).norm() / (zeta * dense).norm())
    assert rel < 1e-6, rel


@pytest.fixture(scope="module")
def gaussian_case(gaussian_prior):
    g = torch.Generator().manual_seed(1)
    x = gaussian_prior.sample((1, 3, 32, 32), g)
    k, sigma = _kernel7(), 10 / 255
    y = Blur(k, sigma)(x, g)
    mean, var = gaussian_prior.posterior(y, k, sigma)
    return x, y, k, sigma, mean


def _expected_output(prior, y, k, sigma, guidance, steps, monkeypatch):
    """With the Gaussian prior the sampler is affine in (x_T, noises): its expectation is the run
    with every noise at its mean, zero. This isolates the approximation bias from Monte-Carlo error."""
    with monkeypatch.context() as m:
        m.setattr(ParticleNoise, "randn", lambda self, shape, like: torch.zeros((len(self),) + tuple(shape)))
        out, _ = samplers.posterior_sample(prior, y, Blur(k, sigma), Schedule(steps), guidance=guidance, n=1,
                                           disable=True)
    return out


def test_pigdm_posterior_mean(gaussian_prior, gaussian_case, monkeypatch):
    """Mean of 64 ΠGDM samples vs the closed-form posterior mean E[x | y, k].

    Tolerance = Monte-Carlo part (4 standard errors of the 64-sample mean, from the samples) +
    ΠGDM's approximation bias, which is exactly ‖E[sampler] − E[x|y]‖ (computed noise-free below)
    and must itself be small: under 30 % of the distance between y and the posterior mean.
    """
    x, y, k, sigma, post = gaussian_case
    samples, _ = samplers.posterior_sample(gaussian_prior, y, Blur(k, sigma), Schedule("100"), guidance="pigdm",
                                           n=64, seed=0, disable=True)
    mean64 = samples.mean(0, keepdim=True)
    expected = _expected_output(gaussian_prior, y, k, sigma, "pigdm", "100", monkeypatch)
    mc = float((samples.var(0).mean() / 64).sqrt())
    bias = _rms(expected - post)
    assert bias < 0.3 * _rms(y - post), (bias, _rms(y - post))
    assert _rms(mean64 - expected) < 4 * mc
    assert _rms(mean64 - post) < 4 * mc + bias
    # and the posterior spread is right to within 30 % (ΠGDM approximates Cov(x0|x_t) by r_t² I)
    post_std = float(gaussian_prior.posterior(y, k, sigma)[1].mean().sqrt())
    assert 0.7 < float(samples.std(0).pow(2).mean().sqrt()) / post_std < 1.3


def test_dps_moves_towards_posterior_mean(gaussian_prior, gaussian_case):
    """DPS (authors' weighting, 1000 steps) has no closed form: its non-squared-norm guidance is a
    cruder approximation than ΠGDM. With the Monte-Carlo part removed, its bias must be under half
    the distance from y to E[x|y] (measured: about 0.4 of it)."""
    x, y, k, sigma, post = gaussian_case
    n = 16
    samples, _ = samplers.posterior_sample(gaussian_prior, y, Blur(k, sigma), Schedule("1000"), guidance="dps",
                                           n=n, seed=0, disable=True)
    err = _rms(samples.mean(0, keepdim=True) - post)
    mc = float((samples.var(0).mean() / n).sqrt())
    bias = max(err**2 - mc**2, 0.0) ** 0.5
    assert err < 0.7 * _rms(y - post), (err, _rms(y - post))
    assert bias < 0.5 * _rms(y - post), (bias, mc, _rms(y - post))


def _psnr(a, b) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_fast_em_recovers_kernel_and_improves_image(gaussian_prior):
    """A stationary Gaussian prior only identifies |K| (p(y|k) depends on the kernel's modulus), so
    the test kernel is symmetric: a 9-px horizontal motion with a soft vertical profile. ℓ1 kernel
    prior (λ = 100) removes the background the unregularised M-step leaks. The prior is Gaussian, so
    Eq. 33's expectation under N(x̂0, r_t² I) is exact here: the damped M-step. Measured (seed 3):
    kernel MSE 2.1e-5 against 4.1e-3 for the delta start (190×); PSNR of the 8-particle mean
    17.0 dB against 15.6 dB for the blurry input (single Gaussian-prior samples are noisy by nature)."""
    g = torch.Generator().manual_seed(3)
    x = gaussian_prior.sample((1, 3, 64, 64), g)
    k = torch.zeros(15, 15)
    k[7, 3:12] = 1
    k[6, 4:11] = k[8, 4:11] = 0.5
    k = recenter(k / k.sum())
    sigma = 5 / 255
    y = Blur(k, sigma)(x, g)[0]
    r = diffem.deblur(y, sigma, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=15, steps=100,
                      n_particles=8, kernel_prior="l1", lam=100.0, pigdm_damping=True, progress=False,
                      record_kernels=True)
    mse = float(((r.kernel - k) ** 2).mean())
    start = float(((delta_kernel(15) - k) ** 2).mean())
    assert mse < start / 50, (mse, start)
    assert _psnr(r.mean, x[0]) > _psnr(y, x[0]) + 0.7
    assert len(r.kernels) == 100 and r.image.shape == y.shape and r.kernel.shape == (15, 15)


def test_diffusion_em_runs_and_is_valid(gaussian_prior):
    g = torch.Generator().manual_seed(4)
    x = gaussian_prior.sample((1, 3, 32, 32), g)
    y = Blur(_kernel7(), 5 / 255)(x, g)[0]
    r = diffem.deblur(y, 5 / 255, prior=gaussian_prior, method="em-pigdm", kernel_size=7, steps=20, n_em=3,
                      n_particles=2, kernel_prior="l2", progress=False)
    assert r.samples.shape == (2, 3, 32, 32)
    assert (r.kernel >= 0).all() and abs(float(r.kernel.sum()) - 1) < 1e-5
    assert float(((r.kernel - _kernel7()) ** 2).mean()) < float(((delta_kernel(7) - _kernel7()) ** 2).mean())


def test_fixed_seed_is_bit_identical_and_input_untouched(gaussian_prior):
    y = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    y_copy = y.clone()
    run = lambda seed: diffem.deblur(y, 0.02, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=5, steps=10, n_particles=2,
                                     seed=seed, kernel_prior="l2", progress=False)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.kernel, b.kernel)
    assert not torch.equal(a.samples, c.samples)
    assert torch.equal(y, y_copy)


def test_valid_boundary_any_size_and_exact_data_fit(gaussian_prior):
    """boundary='valid': an odd-sized valid-blurred image comes back at its own size; with the true
    kernel the restored image re-blurred ('valid' part of the canvas) fits y better than the
    circular model's result does on the same data."""
    g = torch.Generator().manual_seed(8)
    scene = gaussian_prior.sample((1, 3, 56, 60), g)
    k = _kernel7()
    sigma = 2 / 255
    y = (blur_valid(scene, k) + sigma * torch.randn(1, 3, 50, 54, generator=g))[0]
    r = diffem.deblur(y, sigma, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=7, steps=10, kernel_prior="l2",
                      boundary="valid", progress=False)
    assert r.image.shape == y.shape and r.kernel.shape == (7, 7) and r.info["boundary"] == "valid"
    errs = {}
    for bd in ("valid", "circular"):
        res = diffem.restore(y, k, sigma, prior=gaussian_prior, method="pigdm", steps=30, n_particles=4, boundary=bd, progress=False)
        errs[bd] = _rms(blur(res.mean[None], k)[..., 3:-3, 3:-3] - y[..., 3:-3, 3:-3])  # interior re-blur
    assert errs["valid"] < errs["circular"], errs
    with pytest.raises(ValueError, match="boundary"):
        diffem.deblur(y, sigma, prior=gaussian_prior, kernel_size=7, boundary="reflect", progress=False)


def test_grayscale_input_gives_grayscale_output(gaussian_prior):
    y = torch.rand(24, 24, generator=torch.Generator().manual_seed(6))
    r = diffem.deblur(y, 0.02, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=5, steps=5, kernel_prior="l2", progress=False)
    assert r.image.shape == (1, 24, 24)
    r2 = diffem.restore(y[None], delta_kernel(5), 0.02, prior=gaussian_prior, method="pigdm", steps=5, progress=False)
    assert r2.image.shape == (1, 24, 24)


@pytest.mark.parametrize("kwargs, match", [
    (dict(y=torch.full((3, 32, 32), float("nan"))), "y"),
    (dict(y=torch.full((3, 32, 32), float("inf"))), "y"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-0.1), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(kernel_size=64), "kernel_size"),
    (dict(kernel_size=2), "kernel_size"),
    (dict(y=torch.rand(4, 32, 32)), "y"),
    (dict(y=torch.rand(2, 32, 32)), "y"),
    (dict(y=torch.rand(2, 3, 32, 32)), "y"),
    (dict(y=torch.zeros(3, 32, 32, dtype=torch.int64)), "y"),
    (dict(method="fast-em-ddrm"), "method"),
    (dict(prior="no-such-prior"), "prior"),
    (dict(n_particles=0), "n_particles"),
    (dict(kernel_init=torch.zeros(5, 5)), "kernel_init"),
    (dict(kernel_init=torch.zeros(5, 5).to("meta")), "kernel_init"),
    (dict(kernel_init=torch.zeros(5, 5, dtype=torch.float64)), "kernel_init"),
    (dict(device="tpu"), "device"),
])
def test_bad_input_raises_value_error_naming_argument(gaussian_prior, kwargs, match):
    args = dict(y=torch.rand(3, 32, 32), sigma=0.02, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=5, steps=2, progress=False,
                kernel_prior="l2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffem.deblur(**args)


def test_restore_bad_kernel(gaussian_prior):
    y = torch.rand(3, 32, 32)
    for k in (torch.ones(5, 5), -delta_kernel(5), torch.ones(5, 4) / 20, torch.full((5, 5), float("nan"))):
        with pytest.raises(ValueError, match="kernel"):
            diffem.restore(y, k, 0.02, prior=gaussian_prior, method="pigdm", steps=2, progress=False)
    with pytest.raises(ValueError, match="method"):
        diffem.restore(y, delta_kernel(5), 0.02, prior=gaussian_prior, method="ddrm")


def test_samplers_leave_the_callers_physics_alone_and_return_the_kernel(gaussian_prior):
    g = torch.Generator().manual_seed(9)
    x = gaussian_prior.sample((1, 3, 32, 32), g)
    y = Blur(_kernel7(), 5 / 255)(x, g)
    start = delta_kernel(7)
    mstep = KernelMStep(hqs=dict(regulariser="l2"))
    for run in (samplers.fast_diffusion_em, samplers.diffusion_em):
        physics = Blur(start, 5 / 255)
        kw = dict(n_em=2) if run is samplers.diffusion_em else {}
        _, k = run(gaussian_prior, y, physics, Schedule(8), mstep=mstep, disable=True, **kw)
        assert physics.kernel is start and torch.equal(start, delta_kernel(7))
        assert not torch.equal(k, start) and abs(float(k.sum()) - 1) < 1e-5


@pytest.mark.parametrize("prior_name", ["gaussian", "default"])
def test_first_particle_does_not_depend_on_the_number_of_particles(gaussian_prior, prior_name):
    """Per-particle noise streams (seed, i): non-blind, particle 0 of n = 4 is the n = 1 result; with the
    UNet up to the float rounding of batched fp32 convolutions (measured 3e-7), exactly with the FFT prior.
    The UNet is pinned to fp32: on AVX512-BF16 CPUs it would autocast to bf16, whose batch-1 and batch-4
    convolutions differ by ~1.6e-2 in ε — rounding, not a shared noise stream."""
    prior = gaussian_prior if prior_name == "gaussian" else load_prior("default", autocast_bf16=False)
    g = torch.Generator().manual_seed(10)
    y = Blur(_kernel7(), 10 / 255)(gaussian_prior.sample((1, 3, 32, 32), g).clamp(0, 1), g)[0]
    for boundary in ("circular", "valid"):
        one, four = (diffem.restore(y, _kernel7(), 10 / 255, prior=prior, method="pigdm", steps=6, n_particles=n, seed=7,
                                    boundary=boundary, progress=False).samples for n in (1, 4))
        if prior_name == "gaussian":
            assert torch.equal(four[0], one[0])
        else:
            assert torch.allclose(four[0], one[0], atol=1e-5)
        assert not torch.allclose(four[1], one[0], atol=1e-2)       # the other particles are other draws


def test_kernel_init_of_another_dtype_is_accepted(gaussian_prior):
    """Bug 7: a float64 (or numpy) kernel_init with a float32 y was rejected, then cast anyway."""
    y = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(11))
    k = torch.rand(5, 5, generator=torch.Generator().manual_seed(12))
    run = lambda k0: diffem.deblur(y, 0.02, prior=gaussian_prior, method="fast-em-pigdm", kernel_size=5, steps=4, kernel_prior="l2",
                                   kernel_init=k0, progress=False)
    ref = run(k)
    for k0 in (k.double(), k.double().numpy()):
        r = run(k0)
        assert torch.equal(r.samples, ref.samples) and torch.equal(r.kernel, ref.kernel)


def test_numpy_images_are_height_width_channels(gaussian_prior):
    """Bug 4: one numpy convention, (H, W, C) like PIL/imageio, everywhere; (C, H, W) numpy is refused
    with a hint instead of being read as another layout."""
    y = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(13))
    run = lambda yy: diffem.restore(yy, delta_kernel(5), 0.02, prior=gaussian_prior, method="pigdm", steps=3, progress=False)
    assert torch.equal(run(y.permute(1, 2, 0).numpy()).samples, run(y).samples)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        run(y.numpy())
