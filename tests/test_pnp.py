"""The image stage: FFDNet module and weights loading, the denoiser interface, PnP-HQS."""
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffem.denoisers import FFDNetDenoiser, PriorDenoiser, load_denoiser
from diffem.denoisers.ffdnet import FFDNet, WeightsError, ffdnet_from_state_dict, read_ffdnet_state_dict
from diffem.physics import Blur, blur, blur_valid, kernel_to_otf
from diffem.pnp import FIRST_CG_ITERS, pnp_hqs, pnp_schedule


def _tiny_kair_state_dict(seed=0):
    """A random FFDNet state dict in KAIR's key layout: 3 conv layers, 4 channels wide."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.0": (4, 13), "model.2": (4, 4), "model.4": (12, 4)}
    sd = {}
    for name, (cout, cin) in shapes.items():
        sd[f"{name}.weight"] = 0.3 * torch.randn(cout, cin, 3, 3, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)
    return sd


def _reference_forward(sd, x, sigma):
    """FFDNet written out by hand: unshuffle 2×2 (channel c, row offset, col offset), noise map, convs."""
    B, C, H, W = x.shape
    xp = F.pad(x, (0, W % 2, 0, H % 2), mode="replicate")
    h, w = xp.shape[-2] // 2, xp.shape[-1] // 2
    down = xp.reshape(B, C, h, 2, w, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, h, w)
    z = torch.cat([down, torch.full((B, 1, h, w), sigma)], 1)
    z = F.relu(F.conv2d(z, sd["model.0.weight"], sd["model.0.bias"], padding=1))
    z = F.relu(F.conv2d(z, sd["model.2.weight"], sd["model.2.bias"], padding=1))
    z = F.conv2d(z, sd["model.4.weight"], sd["model.4.bias"], padding=1)
    up = z.reshape(B, C, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C, 2 * h, 2 * w)
    return up[..., :H, :W]


def test_ffdnet_loads_a_kair_state_dict_and_matches_a_hand_written_forward(tmp_path):
    sd = _tiny_kair_state_dict()
    path = tmp_path / "tiny_ffdnet.pth"
    torch.save(sd, path)
    net = ffdnet_from_state_dict(read_ffdnet_state_dict(str(path)))
    assert len(net.model) == 5 and net.model[0].out_channels == 4
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(1))     # odd sizes: padded and cropped
    out = net(x, torch.tensor([0.1, 0.1]))
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_forward(sd, x, 0.1), rtol=1e-5, atol=1e-5)   # layouts round differently


class _NotATensor:
    def __reduce__(self):   # what a malicious pickle would do: call a function on load
        return (print, ("this must never run",))


def test_a_pth_holding_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model.0.weight": _NotATensor()}, f)
    with pytest.raises(WeightsError, match="refused"):
        read_ffdnet_state_dict(str(path))


def test_a_state_dict_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1, 1, 3, 3)}, path)
    with pytest.raises(WeightsError, match="KAIR FFDNet layout"):
        ffdnet_from_state_dict(read_ffdnet_state_dict(str(path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ffdnet_state_dict(str(tmp_path / "missing.pth"))


@pytest.fixture(scope="module")
def ffdnet():
    return load_denoiser("ffdnet")


@pytest.mark.parametrize("name", ["ffdnet", "prior"])
def test_denoiser_sigma_is_the_noise_std_on_the_unit_scale(name, ffdnet):
    """On a constant grey image plus noise of std σ: D(·, σ) removes most of the noise and keeps the
    level, while the same σ on the 0..255 scale's inverse (σ/255, 'almost no noise') keeps it."""
    den = ffdnet if name == "ffdnet" else PriorDenoiser(load_denoiser("prior").prior)
    sigma = 25 / 255
    g = torch.Generator().manual_seed(0)
    x = 0.4 + sigma * torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        right = den(x, sigma)
        wrong = den(x, sigma / 255)
    assert abs(float(right.mean()) - 0.4) < 0.01
    assert float(right.std()) < 0.25 * sigma
    assert float(wrong.std()) > 0.6 * sigma
    grey = den(x[:, :1], sigma)                       # grey goes through as 3 equal channels
    assert grey.shape == (1, 1, 64, 64)
    if name == "ffdnet":                              # (the small prior's x̂0 is a weak grey denoiser)
        assert float(grey.std()) < 0.25 * sigma


def test_ffdnet_bf16_only_from_its_noise_level_on(ffdnet):
    """``bf16_from``: bf16 autocast at σ ≥ the threshold (an fp32 result close to the fp32 network's),
    exactly the fp32 network below it."""
    gated = FFDNetDenoiser(ffdnet.net, bf16_from=10 / 255)
    x = 0.4 + 0.1 * torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for sigma in (5 / 255, 25 / 255):
            out, ref = gated(x, sigma), ffdnet(x, sigma)
            assert out.dtype == torch.float32
            if sigma < gated.bf16_from:
                assert torch.equal(out, ref)
            else:
                assert 0 < float((out - ref).abs().max()) < 0.02


def test_pnp_schedule_is_dpir():
    sched = pnp_schedule(10 / 255, iters=8)
    sigmas = [s for s, _ in sched]
    assert sigmas[0] == pytest.approx(49 / 255) and sigmas[-1] == pytest.approx(10 / 255)
    assert np.allclose(np.diff(np.log(sigmas)), np.log(10 / 49) / 7)          # geometric
    assert all(r == pytest.approx(0.23 * (10 / 255) ** 2 / s ** 2) for s, r in sched)


def test_pnp_hqs_with_the_gaussian_prior_reaches_its_closed_form_fixed_point(gaussian_prior, crop128):
    """With a linear denoiser D(z) = m + W(z − m) (the Gaussian prior's x̂0) and a constant σ_k, HQS
    converges to the fixed point x* = D((KᵀK + ρ)⁻¹(Kᵀy + ρ x*)), which is diagonal in Fourier:
    X* − m = W (K̄(Y − K m) ) / (|K|² + ρ(1 − W))."""
    from tests.conftest import levin_kernel

    den = PriorDenoiser(gaussian_prior)
    k = levin_kernel(3, 15)
    sigma = 20 / 255      # (at a small σ the Gaussian denoiser is ≈ identity and HQS converges slowly)
    y = blur(crop128, k) + sigma * torch.randn(crop128.shape, generator=torch.Generator().manual_seed(0))
    rho = 2.0
    x = pnp_hqs(y, Blur(k, sigma), den, iters=200, sigma_start=sigma, lam=rho)     # σ_k = σ: ρ_k = λ
    # the denoiser's transfer function and offset, measured by probing it
    m = den(torch.zeros_like(y), sigma)                             # D(0) = m − W m
    impulse = torch.zeros_like(y)
    impulse[..., 0, 0] = 1.0
    Wt = torch.fft.rfft2(den(impulse, sigma) - m)                   # W's transfer function (real, diagonal)
    m_fixed = torch.fft.irfft2(torch.fft.rfft2(m) / (1 - Wt), s=y.shape[-2:])   # m: the fixed point of D
    K = kernel_to_otf(k, y.shape[-2:])
    Y = torch.fft.rfft2(y - blur(m_fixed, k))
    x_star = m_fixed + torch.fft.irfft2(Wt * K.conj() * Y / (K.abs() ** 2 + rho * (1 - Wt)), s=y.shape[-2:])
    assert float((x - x_star).abs().max()) < 1e-3     # float32 probing of W; 50 iterations: 5e-3


def _dense(physics, shape):
    """The matrix of physics.A for canvas images of ``shape`` (tiny sizes only)."""
    cols = []
    for j in range(shape[0] * shape[1]):
        e = torch.zeros(1, 1, *shape, dtype=torch.float64)
        e.view(-1)[j] = 1
        cols.append(physics.A(e).reshape(-1))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("boundary, size, untrusted", [("circular", (10, 12), False), ("valid", (10, 12), False),
                                                      ("valid", (9, 11), True), ("circular", (9, 11), True)])
def test_blur_prox_solves_the_data_step_exactly(boundary, size, untrusted):
    """argmin ‖y − A x‖²_W + ρ‖x − v‖², i.e. (AᵀWA + ρ) x = AᵀWy + ρ v, against a dense solve: closed form
    (circular, all pixels trusted) and CG on the spectra otherwise (the exact non-circular model, untrusted
    pixels; 9×11 gives a 14×15 canvas: an odd width, where the half spectrum's last column is not doubled)."""
    g = torch.Generator().manual_seed(3)
    k = torch.rand(5, 5, generator=g, dtype=torch.float64)
    k = k / k.sum()
    y = torch.rand(1, 1, *size, generator=g, dtype=torch.float64)
    trusted = torch.rand(size, generator=g) > 0.3 if untrusted else None
    physics = Blur.for_measurement(y, k, 0.1, boundary, trusted=trusted)
    shape = physics.canvas(y).shape[-2:]
    A = _dense(physics, shape)
    weight = torch.ones(y.numel(), dtype=torch.float64) if trusted is None else trusted.reshape(-1).double()
    v = torch.rand(1, 1, *shape, generator=g, dtype=torch.float64)
    rho = 0.05
    dense = torch.linalg.solve(A.T @ (weight[:, None] * A) + rho * torch.eye(A.shape[1], dtype=torch.float64),
                               A.T @ (weight * y.reshape(-1)) + rho * v.reshape(-1))
    torch.testing.assert_close(physics.prox(v, y, rho, cg_iters=200).reshape(-1), dense, rtol=1e-6, atol=1e-8)
    if boundary == "valid":   # the model is the non-circular convolution of the scene around y
        top, left, h, w = physics.box
        inner = v[..., top - 2:top + h + 2, left - 2:left + w + 2]
        torch.testing.assert_close(physics.A(v), blur_valid(inner, k))


def test_pnp_ffdnet_restores_a_blurred_crop(ffdnet, crop128):
    """Measured threshold: +4 dB over the blurry input with the true kernel at σ = 10/255 (circular and valid)."""
    from tests.conftest import levin_kernel

    k = levin_kernel(4, 33)
    sigma = 10 / 255
    g = torch.Generator().manual_seed(0)
    y = blur(crop128, k) + sigma * torch.randn(crop128.shape, generator=g)
    psnr = lambda a, b: -10 * math.log10(float(((a.clamp(0, 1) - b) ** 2).mean()))  # noqa: E731
    x = pnp_hqs(y, Blur(k, sigma), ffdnet)
    assert psnr(x, crop128) > psnr(y, crop128) + 4
    big = F.pad(crop128, (16, 16, 16, 16), mode="reflect")
    yv = blur_valid(big, k) + sigma * torch.randn(crop128.shape, generator=g)
    physics = Blur.for_measurement(yv, k, sigma, "valid")
    xv = physics.crop(pnp_hqs(yv, physics, ffdnet))
    assert xv.shape == yv.shape
    assert psnr(xv, crop128) > psnr(yv, crop128) + 4


def test_pnp_solves_the_first_data_step_accurately_at_low_noise(ffdnet, crop128):
    """Measured: at σ = 1/255, 'valid', Levin kernel 4, 64 CG iterations in the first data step give
    31.63 dB against 31.03 with 8 (the default is 64)."""
    from tests.conftest import levin_kernel

    k, sigma = levin_kernel(4, 33), 1 / 255
    y = blur_valid(F.pad(crop128, (16, 16, 16, 16), mode="reflect"), k)
    y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    physics = Blur.for_measurement(y, k, sigma, "valid")
    psnr = lambda n: -10 * math.log10(float(((physics.crop(pnp_hqs(y, physics, ffdnet, first_cg_iters=n)).clamp(0, 1)
                                              - crop128) ** 2).mean()))  # noqa: E731
    assert psnr(FIRST_CG_ITERS) > psnr(8) + 0.3


def test_prox_cg_tolerance_stops_early_and_only_then():
    """``cg_tol``: CG stops once the preconditioned residual falls to cg_tol × its start — at 1 before any
    iteration (x = v), at 1e-3 near the exact solve but not on it."""
    g = torch.Generator().manual_seed(5)
    k = torch.rand(7, 7, generator=g, dtype=torch.float64)
    y = torch.rand(1, 1, 20, 22, generator=g, dtype=torch.float64)
    physics = Blur.for_measurement(y, k / k.sum(), 0.05, "valid")
    v = physics.canvas(y)
    exact = physics.prox(v, y, 1e-3, cg_iters=400)
    torch.testing.assert_close(physics.prox(v, y, 1e-3, cg_iters=400, cg_tol=1.0), v)
    loose = physics.prox(v, y, 1e-3, cg_iters=400, cg_tol=1e-3)
    assert 0 < float((loose - exact).norm()) < 0.05 * float((v - exact).norm())
