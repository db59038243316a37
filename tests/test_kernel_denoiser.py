"""The Plug-&-Play kernel denoiser: architecture, shipped weights, errors, training."""
import math

import pytest
import torch

from diffem.kernels.denoiser import (
    KernelDenoiser,
    count_parameters,
    load_kernel_denoiser,
    save_kernel_denoiser,
    shipped_weights,
)
from diffem.kernels.generators import HandShakeGenerator, MixtureGenerator, MotionBlurGenerator
from diffem.kernels.train import evaluate, make_batch, make_pool, shift_bilinear, train_kernel_denoiser
from diffem.physics import center_of_mass


def test_architecture_matches_the_paper():
    assert count_parameters(KernelDenoiser(33)) == 28_641  # FDnCNN(2 -> 32 x5 -> 1) with biases
    assert count_parameters(KernelDenoiser(33, bias=False)) == 28_512
    m = KernelDenoiser(33)
    keys = sorted(m.state_dict())
    assert keys[0] == "model.0.bias" and "model.8.weight" in keys  # the authors' key names
    k = torch.rand(3, 1, 33, 33)
    assert m(k, 3e-3).shape == (3, 1, 33, 33)
    assert m(k[:, 0], torch.tensor([1e-3, 2e-3, 3e-3])).shape == (3, 33, 33)
    assert m(k[0, 0], 1e-3).shape == (33, 33)


def test_bias_free_variant_is_homogeneous():
    # no biases + ReLU: D(a k, a σ) = a D(k, σ) for a > 0
    torch.manual_seed(0)
    m = KernelDenoiser(17, bias=False)
    k = torch.rand(2, 1, 17, 17)
    torch.testing.assert_close(m(3 * k, 3 * 2e-3), 3 * m(k, 2e-3), rtol=1e-4, atol=1e-7)


def test_forward_rejects_bad_input():
    m = KernelDenoiser(33)
    with pytest.raises(ValueError, match="k"):
        m(torch.rand(1, 1, 21, 21), 1e-3)
    with pytest.raises(ValueError, match="sigma"):
        m(torch.rand(2, 1, 33, 33), torch.tensor([1e-3, 2e-3, 3e-3]))
    with pytest.raises(ValueError, match="sigma"):
        m(torch.rand(1, 1, 33, 33), float("nan"))


def _held_out(size, n=48):
    # seeds never used by training (pools are seeds 0 and 10000)
    gen = MixtureGenerator([HandShakeGenerator(size), MotionBlurGenerator(size, intensity=(0.0, 1.0))], seed=777)
    return gen.step(n)


@pytest.mark.parametrize("size,top", [(33, 2e-2), (64, 1e-2)])
def test_shipped_denoiser_halves_the_mse(size, top):
    d = load_kernel_denoiser(size)
    assert d.size == size and not any(p.requires_grad for p in d.parameters())
    assert float(d.meta["sigma_max"]) == pytest.approx(top)
    ks = _held_out(size)
    for sigma in (3e-3, top):
        noisy, den = evaluate(d, ks, sigma, seed=5)
        assert den * 2 <= noisy, (sigma, noisy, den)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="size"):
        load_kernel_denoiser(21)
    with pytest.raises(ValueError, match="size"):
        load_kernel_denoiser(64, path=shipped_weights(33))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="safetensors"):
        load_kernel_denoiser(33, path=bad)
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a diffem kernel-denoiser"):
        load_kernel_denoiser(33, path=other)
    with pytest.raises(FileNotFoundError):
        load_kernel_denoiser(33, path=tmp_path / "missing.safetensors")


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(1)
    m = KernelDenoiser(9, bias=False)
    p = save_kernel_denoiser(m, tmp_path / "d.safetensors", sigma_min=1e-3, sigma_max=1e-2)
    m2 = load_kernel_denoiser(9, path=p)
    k = torch.rand(2, 1, 9, 9)
    torch.testing.assert_close(m2(k, 1e-3), m(k, 1e-3))
    assert m2.meta["size"] == "9" and m2.meta["bias"] == "0"


def test_training_batches():
    pool = make_pool(15, 8, seed=0, progress=False)
    g = torch.Generator().manual_seed(0)
    noisy, sigma, clean = make_batch(pool, 6, (1e-3, 1e-2), g, crop=None, project_fraction=0.0)
    assert noisy.shape == clean.shape == (6, 1, 15, 15)
    assert ((sigma >= 1e-3) & (sigma <= 1e-2)).all()
    torch.testing.assert_close(clean.sum((-1, -2)), torch.ones(6, 1), atol=1e-5, rtol=0)
    # the measured noise matches the drawn σ
    resid = ((noisy - clean).flatten(1).std(1) / sigma)
    assert (resid - 1).abs().mean() < 0.15
    _, _, crops = make_batch(pool, 4, (1e-3, 1e-2), g, crop=9)
    assert crops.shape == (4, 1, 9, 9)
    # bilinear shift moves the centre of mass by exactly the offset (kernel away from the border)
    k = torch.zeros(1, 15, 15)
    k[0, 6:9, 6:9] = 1 / 9
    moved = shift_bilinear(k, torch.tensor([[0.3, -1.7]]))
    torch.testing.assert_close(center_of_mass(moved) - center_of_mass(k), torch.tensor([[0.3, -1.7]]),
                               atol=1e-5, rtol=0)


def test_training_is_deterministic_and_resumable(tmp_path):
    kw = dict(size=9, iterations=6, batch_size=4, pool_size=16, crop=None, checkpoint_every=3, threads=1,
              progress=False, log=lambda *a: None)
    a = train_kernel_denoiser(out=tmp_path / "a.safetensors", **kw)
    b = train_kernel_denoiser(out=tmp_path / "b.safetensors", resume=False, **kw)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    # interrupted after 3 iterations, then resumed to 6: the same weights as uninterrupted
    train_kernel_denoiser(out=tmp_path / "c.safetensors", stop_after=4, **kw)
    ckpt = tmp_path / "c.safetensors.ckpt"
    assert ckpt.exists() and not (tmp_path / "c.safetensors").exists()
    c = train_kernel_denoiser(out=tmp_path / "c.safetensors", **kw)
    for (ka, va), (kc, vc) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.allclose(va, vc, atol=1e-7), ka
    assert math.isfinite(evaluate(c, make_pool(9, 4, 3, progress=False), 1e-2)[1])
