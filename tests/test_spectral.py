"""The spectral kernel estimator (``diffem.blind.spectral``): phase retrieval from an exact
autocorrelation, the blurry image's gradient autocorrelation as an estimate of k ⋆ k, and the
estimator's two orientations."""
import pytest
import torch
import torch.nn.functional as F

from diffem.blind import spectral
from diffem.physics import blur_valid
from tests.conftest import levin_kernel


def _autocorrelation(k: torch.Tensor) -> torch.Tensor:
    """k ⋆ k on (2n−1)², lag 0 at the centre (direct, no FFT)."""
    n = k.shape[-1]
    return F.conv2d(F.pad(k.double()[None, None], (n - 1,) * 4), k.double()[None, None])[0, 0]


def _similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Maximum normalised cross-correlation of a with b or its flip, over all shifts."""
    n = a.shape[-1]
    best = 0.0
    for bb in (b, b.flip(-2, -1)):
        c = F.conv2d(a.double()[None, None], bb.double().flip(-2, -1)[None, None], padding=n - 1)
        best = max(best, float(c.max() / (a.double().norm() * bb.double().norm())))
    return best


def _rectangles(n: int = 256, count: int = 300, seed: int = 0) -> torch.Tensor:
    """A piecewise-constant test scene: sparse gradients, nearly uncorrelated beyond the edges."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, n)
    for _ in range(count):
        t, left = torch.randint(0, n, (2,), generator=g).tolist()
        h, w = torch.randint(2, 40, (2,), generator=g).tolist()
        x[t:t + h, left:left + w] = torch.rand(1, generator=g)
    return x


@pytest.mark.parametrize("index", [1, 7, 8])
def test_phase_retrieval_recovers_a_kernel_from_its_exact_autocorrelation(index):
    """Levin kernels 1, 7, 8 in 33² (measured: similarity 1.0000, Fourier error ≤ 1e-4). (Kernels that
    are the convolution of two others have more than one solution: a ⊛ b and a ⊛ b(−·) share it.)"""
    k = levin_kernel(index, 33)
    k_hat, error = spectral.phase_retrieval(_autocorrelation(k), 33)
    assert k_hat.shape == (33, 33) and float(k_hat.min()) >= 0 and abs(float(k_hat.sum()) - 1) < 1e-9
    assert error < 1e-3 and _similarity(k_hat, k) > 0.99


def test_gradient_autocorrelation_of_a_blurry_image_is_the_kernels():
    """On a scene with sparse gradients, 'valid' blur, σ = 2/255: the estimate is close to k ⋆ k for every
    Levin kernel (measured similarity 0.80–0.90) and the sharp scene's is not (0.45–0.57)."""
    x = _rectangles()
    noise = torch.Generator().manual_seed(1)
    for index in range(1, 9):
        k = levin_kernel(index, 33)
        y = blur_valid(x[None, None], k)[0, 0]
        y = y + 2 / 255 * torch.randn(y.shape, generator=noise)
        ac = spectral.gradient_autocorrelation(y, 33)
        assert ac.shape == (65, 65) and float(ac.min()) >= 0 and abs(float(ac.sum()) - 1) < 1e-9
        truth = _autocorrelation(k)
        assert _similarity(ac, truth) > 0.75
        assert _similarity(spectral.gradient_autocorrelation(x, 33), truth) < 0.65


def test_the_estimator_gives_a_kernel_and_its_mirror_image():
    """Both orientations are valid kernels and mirror images of each other; the estimate resembles the
    truth (Levin kernel 3: measured 0.83, a delta 0.41); untrusted pixels are left out; a bad setting
    is an error naming it."""
    from diffem.blind.pipeline import estimate_kernel_denoised

    k = levin_kernel(3, 33)
    y = blur_valid(_rectangles()[None, None], k)[0, 0]
    k_hat = estimate_kernel_denoised(y, 0.0, 33, "valid", estimator="spectral")
    mirror = estimate_kernel_denoised(y, 0.0, 33, "valid", estimator="spectral-flipped")
    for kernel in (k_hat, mirror):
        assert kernel.shape == (33, 33) and float(kernel.min()) >= 0 and abs(float(kernel.sum()) - 1) < 1e-5
    assert torch.allclose(mirror, k_hat.flip(-2, -1), atol=1e-5)
    assert _similarity(k_hat, k) > 0.7
    hidden = torch.ones(y.shape, dtype=torch.bool)
    hidden[:, :100] = False
    changed = estimate_kernel_denoised(y, 0.0, 33, "valid", trusted=hidden, estimator="spectral")
    assert not torch.equal(changed, k_hat)
    with pytest.raises(ValueError, match="restart"):
        spectral.estimate_kernel_spectral(y, 33, restart=4)


def test_the_photo_pipeline_scores_both_orientations_at_the_largest_support():
    from diffem.realphoto.pipeline import MAX_KERNEL_SIZE, ROOMY_SIZE, _kernel_size, kernel_candidates, roomy_size

    assert kernel_candidates(75, True)[-2:] == [("spectral", 75), ("spectral-flipped", 75)]
    # a large photo: ℓ0-NNLS once more with room around the longest blur aimed at (for what an estimate has
    # not found yet once it is re-centred on its mass), at most a quarter of the photo
    shape = (2000, 3000)
    ksize, auto = _kernel_size("auto", shape)
    roomy = roomy_size(ksize, auto, shape)
    assert (ksize, roomy) == (MAX_KERNEL_SIZE, ROOMY_SIZE) and roomy >= 1.4 * ksize
    assert kernel_candidates(ksize, auto, roomy)[-1] == ("l0-nnls", roomy)
    assert roomy_size(*_kernel_size("auto", (400, 900)), (400, 900)) == 101
    assert roomy_size(*_kernel_size("auto", (256, 300)), (256, 300)) == 65   # none: the support itself
    assert kernel_candidates(65, True, 65) == kernel_candidates(65, True)
    assert roomy_size(33, False, shape) == 33                                  # a size the user gave
    assert kernel_candidates(33, False) == [("multiscale", 33), ("l0-nnls", 33), ("spectral", 33),
                                            ("spectral-flipped", 33)]
