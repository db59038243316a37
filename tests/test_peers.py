"""Peer methods (diffem.peers): Anger l0, BlindDPS, naive baselines. Small, fast cases only."""
import numpy as np
import pytest
import torch

from diffem.kernels import gaussian_kernel
from diffem.peers import baselines, blinddps, kernel_diffusion, l0
from diffem.physics import blur, delta_kernel, recenter


def rectangles(n=96, count=30, seed=0):
    """A piecewise-constant test image (the l0-gradient prior's ideal case), (3, n, n) in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    img = np.full((3, n, n), 0.5)
    for _ in range(count):
        r, c = rng.integers(0, n - 8, 2)
        h, w = rng.integers(6, n // 3, 2)
        img[:, r:r + h, c:c + w] = rng.uniform(0.1, 0.9, (3, 1, 1))
    return torch.from_numpy(img)


def line_kernel(size=15, length=7):
    k = torch.zeros(size, size, dtype=torch.float64)
    c = size // 2
    for j in range(length):   # a diagonal-ish motion: a horizontal run then one step down
        k[c + (j >= length // 2), c - length // 2 + j] = 1.0
    return k / k.sum()


def kernel_err(a, b):
    return float(((recenter(a.double()) - recenter(b.double())) ** 2).sum())


def assert_valid_kernel(k, size):
    assert k.shape == (size, size)
    assert float(k.min()) >= 0
    assert abs(float(k.sum()) - 1) < 1e-5


# --- l0: building blocks ----------------------------------------------------------------------
def test_kernel_step_exact_without_noise():
    x = rectangles(64)[0]
    k = line_kernel(9, 5)
    v = blur(x[None, None], k)[0, 0]
    est = l0.kernel_step(x, v, 9, gamma=1e-6)
    # gradients carry no DC, so K(0) = 0: the estimate is k minus its mean over the 64×64 field
    assert torch.allclose(est + 1 / 64 ** 2, k, atol=1e-5)


def test_clean_kernel_removes_isolated_and_centres():
    k = torch.zeros(11, 11, dtype=torch.float64)
    k[2, 1:6] = 1.0        # the main blob, off-centre
    k[9, 9] = 0.2          # isolated speck: 0.2/5.2 < 10 % of the mass
    out = l0.clean_kernel(k)
    assert_valid_kernel(out, 11)
    assert float(out[9, 9]) == 0 and int((out > 0).sum()) == 5
    assert torch.equal((out > 0).nonzero()[:, 0].unique(), torch.tensor([5]))   # moved to the centre row


def test_tv_deconv_beats_blurry_with_true_kernel():
    x = rectangles(64)
    k = line_kernel(15, 9)
    g = torch.Generator().manual_seed(1)
    y = blur(x[None], k)[0] + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    xh = l0.tv_deconv(y, k, lam=0.25 / 0.01 ** 2, iterations=30)
    assert ((xh - x) ** 2).mean() < 0.3 * ((y - x) ** 2).mean()


# --- l0: the whole method -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def l0_case():
    x = rectangles(64, count=20)
    k = line_kernel(15, 9)
    g = torch.Generator().manual_seed(2)
    sigma = 0.01
    y = blur(x[None], k)[0] + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    image, kernel = l0.deblur_l0(y.float(), sigma, 15, progress=False)
    return x, k, y, sigma, image, kernel


def test_l0_shapes_and_kernel(l0_case):
    x, k, y, sigma, image, kernel = l0_case
    assert image.shape == y.shape and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert_valid_kernel(kernel, 15)


def test_l0_recovers_kernel_better_than_delta(l0_case):
    x, k, y, sigma, image, kernel = l0_case
    # measured: error ≈ 0.003 vs 0.24 for a delta
    assert kernel_err(kernel, k) < 0.1 * kernel_err(delta_kernel(15, torch.float64), k)


def test_l0_deterministic(l0_case):
    x, k, y, sigma, image, kernel = l0_case
    image2, kernel2 = l0.deblur_l0(y.float(), sigma, 15, progress=False)
    assert torch.equal(image, image2) and torch.equal(kernel, kernel2)


def test_l0_bad_input():
    for size in (2, 40):
        with pytest.raises(ValueError, match="kernel_size"):
            l0.deblur_l0(torch.rand(3, 32, 32), 0.01, size, progress=False)
    with pytest.raises(ValueError, match="boundary.*'circular'"):
        l0.deblur_l0(torch.rand(3, 32, 32), 0.01, 7, progress=False, boundary="periodic")
    with pytest.raises(ValueError, match="y"):
        l0.deblur_l0(torch.rand(2, 3, 32, 32), 0.01, 7, progress=False)
    with pytest.raises(ValueError, match="unknown option"):
        l0.deblur_l0(torch.rand(3, 32, 32), 0.01, 7, progress=False, lamda=1)


# --- baselines ------------------------------------------------------------------------------------
def test_blurry_baseline():
    y = torch.rand(3, 20, 20) * 1.2 - 0.1
    image, k = baselines.blurry_baseline(y, 0.05, 9)
    assert torch.equal(image, y.clamp(0, 1))
    assert torch.equal(k, delta_kernel(9))


@pytest.mark.parametrize("width", [1.5, 3.0])
def test_fit_gaussian_width(width):
    x = rectangles(96, count=60, seed=3)
    g = torch.Generator().manual_seed(0)
    y = blur(x[None], gaussian_kernel(21, width, dtype=torch.float64))[0] + 0.01 * torch.randn(
        x.shape, generator=g, dtype=torch.float64)
    est, scores = baselines.fit_gaussian_width(y, 0.01, 21)
    assert abs(est - width) < 0.35 * width, (est, width)


def test_gauss_pigdm_small():
    x = rectangles(32)
    y = blur(x[None], gaussian_kernel(9, 1.5))[0].float()
    out = [baselines.gauss_pigdm(y, 0.02, 9, prior="gaussian", steps=4, seed=3, progress=False) for _ in range(2)]
    image, k, width = out[0]
    assert image.shape == y.shape
    assert_valid_kernel(k, 9)
    assert width > 0
    assert torch.equal(out[0][0], out[1][0])


# --- BlindDPS -------------------------------------------------------------------------------------
def test_kernel_net_roundtrip():
    k = line_kernel(33, 11).float()[None]
    z = kernel_to_net = kernel_diffusion.kernel_to_net(k)
    assert z.shape == (1, 1, 36, 36) and float(z.min()) == -1 and float(z.max()) == 1
    assert torch.allclose(kernel_diffusion.net_to_kernel(kernel_to_net)[0], k[0], atol=1e-6)


@pytest.fixture(scope="module")
def tiny_kernel_prior():
    from diffem.priors.base import Prior
    torch.manual_seed(0)
    net = kernel_diffusion.build_network()
    with torch.no_grad():   # the output conv is zero-initialised: give it weights so ε is not 0
        net.out[-1].weight.normal_(0, 0.02)
    return Prior(net, channels=1, name="tiny-kernel").eval()


def test_blind_dps_small(tiny_kernel_prior):
    y = blur(rectangles(32)[None], line_kernel(9, 5))[0].float()
    runs = [blinddps.deblur_blind_dps(y, 0.02, prior="gaussian", kernel_size=9, steps=3, seed=7, progress=False,
                                      kernel_prior=tiny_kernel_prior) for _ in range(2)]
    image, kernel = runs[0]
    assert image.shape == y.shape and float(image.min()) >= 0 and float(image.max()) <= 1
    assert_valid_kernel(kernel, 9)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    other, _ = blinddps.deblur_blind_dps(y, 0.02, prior="gaussian", kernel_size=9, steps=3, seed=8,
                                         progress=False, kernel_prior=tiny_kernel_prior)
    assert not torch.equal(image, other)


def test_blind_dps_gray_and_33(tiny_kernel_prior):
    y = torch.rand(1, 40, 40)
    image, kernel = blinddps.deblur_blind_dps(y, 0.02, prior="gaussian", kernel_size=33, steps=2, seed=0,
                                              progress=False, kernel_prior=tiny_kernel_prior)
    assert image.shape == (1, 40, 40)
    assert_valid_kernel(kernel, 33)


@pytest.mark.skipif(not kernel_diffusion.WEIGHTS.exists(), reason="shipped kernel prior not built")
def test_shipped_kernel_prior_loads_and_samples_kernels():
    kp = kernel_diffusion.load_kernel_prior()
    from diffem.schedule import Schedule
    s = Schedule(20)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 36, 36, generator=g)
    with torch.no_grad():
        for i in reversed(range(len(s))):
            z0 = kp.x0(z, s.t(i, 4))
            z = s.ddpm_step(z, z0, i, torch.randn(z.shape, generator=g))
    k = kernel_diffusion.net_to_kernel(z0)
    for kk in k:
        assert_valid_kernel(kk, 33)
    # mass in the brightest 10 % of pixels: 0.10 for a flat kernel, ≈ 0.17 for clipped N(0,1) noise.
    # The shipped prior (200 training steps, undertrained) measured 0.13-0.43, mean 0.24, on this seed.
    top = torch.sort(k.flatten(1), dim=1, descending=True).values[:, :109].sum(1)
    assert float(top.mean()) > 0.2


def test_the_registry_lists_the_peers_and_importing_them_registers_nothing():
    """One registry with explicit imports: no import cycle, no registration as a side effect."""
    import subprocess
    import sys

    code = ("import sys, diffem.peers.l0, diffem.peers.blinddps, diffem.peers.baselines; "
            "assert 'diffem.benchmark.methods' not in sys.modules; "
            "import diffem.benchmark.methods as m; print(sorted(m.available_methods()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("l0", "blind-dps", "blurry", "gauss-pigdm", "fast-em-pigdm", "pigdm-nonblind"):
        assert f"'{name}'" in out
    from diffem.benchmark.methods import get_method
    y = torch.rand(3, 24, 24)
    image, k, extra = get_method("blurry")(y, 0.01, 7, None, 0)
    assert image.shape == y.shape and k.shape == (7, 7)
