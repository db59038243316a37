"""The packaged default prior, its training loop (determinism, resume, export) and perf helpers."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffem.priors import Prior, load_prior
from diffem.priors.default import WEIGHTS_PATH, load_default_prior
from diffem.priors.train import TrainConfig, export_ema, load_images, sample_batch, train

DATA = os.path.join(os.path.dirname(__file__), "data")
CROP = os.path.join(DATA, "adm_cbsd68_crop64.png")

needs_weights = pytest.mark.skipif(not os.path.exists(WEIGHTS_PATH), reason="default prior weights not built yet")


def image():
    return torch.from_numpy(np.asarray(Image.open(CROP).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@needs_weights
def test_default_prior_loads_and_applies_to_any_multiple_of_its_size_step():
    prior = load_prior("default")
    assert isinstance(prior, Prior) and prior.channels == 3 and prior.T == 1000
    cfg = prior.network.config
    assert not cfg.learn_sigma and cfg.attention_ds() == () and not cfg.middle_attention
    # H, W must be multiples of (pixel-unshuffle factor) × 2^(levels-1): 8 for the shipped net
    assert prior.multiple == cfg.pixel_unshuffle * 2 ** (len(cfg.resolved_channel_mult()) - 1)
    assert 16 % prior.multiple == 0  # README and docs promise that multiples of 16 work
    n = sum(p.numel() for p in prior.network.parameters())
    assert 1e6 < n < 7e6  # small: 1.85 M parameters shipped, < 30 MB on disk
    assert os.path.getsize(WEIGHTS_PATH) < 30e6
    h, w = 2 * prior.multiple, 3 * prior.multiple  # non-square
    x = torch.zeros(2, 3, h, w)
    with torch.no_grad():
        e = prior.eps(x, torch.tensor([10, 900]))
    assert e.shape == (2, 3, h, w) and torch.isfinite(e).all()


@needs_weights
def test_default_prior_denoises():
    """x̂0 as a one-step denoiser must clearly beat the noisy input (measured: see docs/benchmarks/priors.md)."""
    prior = load_default_prior()
    x = image()
    g = torch.Generator().manual_seed(0)
    # measured on this crop with the shipped weights: +11.8 dB at 25/255, +13.6 dB at 50/255
    for sigma, gain in [(25 / 255, 8.0), (50 / 255, 10.0)]:
        y = x + sigma * torch.randn(x.shape, generator=g)
        d = prior.denoise(y, sigma)

        def psnr(a):
            return float(-10 * torch.log10(((a.clamp(0, 1) - x) ** 2).mean()))

        assert psnr(d) > psnr(y) + gain, (sigma, psnr(d), psnr(y))


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-prior"):
        load_default_prior(path=str(tmp_path / "nope.safetensors"))


def test_batches_are_a_function_of_seed_and_step():
    imgs = [torch.from_numpy(np.array(Image.open(CROP).convert("RGB"))).permute(2, 0, 1)]
    a = sample_batch(imgs, 4, 16, seed=1, step=7)
    assert torch.equal(a, sample_batch(imgs, 4, 16, seed=1, step=7))
    assert not torch.equal(a, sample_batch(imgs, 4, 16, seed=1, step=8))
    assert a.shape == (4, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="crop"):
        sample_batch(imgs, 1, 65, seed=0, step=0)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_train_resume_equals_uninterrupted_run_and_exports(tmp_path, restore_threads):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(CROP, data / "a.png")
    Image.open(CROP).transpose(Image.Transpose.ROTATE_90).save(data / "b.png")
    small = {"num_channels": 32, "channel_mult": "1,2"}  # a 2-level net keeps this test fast

    def cfg(out, steps):
        return TrainConfig(data=str(data), out=str(out), crop=16, batch=2, steps=steps, lr=1e-3, warmup=2,
                           seed=3, device="cpu", bf16=False, channels_last=False, log_every=1, threads=1)

    r = train(cfg(tmp_path / "a", 4), adm_overrides=small, progress=False)
    assert r["step"] == 4
    train(cfg(tmp_path / "b", 2), adm_overrides=small, progress=False)
    with open(tmp_path / "b" / "loss.csv", "a") as f:   # a row logged after the last checkpoint, then killed
        f.write("3,0.5,0.5,1e-3,1.0\n")
    r = train(cfg(tmp_path / "b", 4), progress=False)  # resumes from step 2
    assert r["step"] == 4
    from diffem.priors.adm import read_state_dict
    for name in ("model.safetensors", "ema.safetensors"):
        sa, _ = read_state_dict(tmp_path / "a" / name)
        sb, _ = read_state_dict(tmp_path / "b" / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    lines = (tmp_path / "b" / "loss.csv").read_text().strip().splitlines()
    assert lines[0].startswith("step,loss") and [int(r.split(",")[0]) for r in lines[1:]] == [1, 2, 3, 4]
    assert export_ema(str(tmp_path / "b"), str(tmp_path / "b.safetensors"))["resumed"][0]["at_step"] == 2
    # the model moved away from its initialisation and the export loads as a default-style prior
    out = tmp_path / "exp.safetensors"
    info = export_ema(str(tmp_path / "a"), str(out))
    assert info["step"] == 4
    prior = load_default_prior(path=str(out))
    assert prior.info["step"] == 4 and prior.network.config.channel_mult == "1,2"
    with pytest.raises(ValueError, match="overwrite"):
        export_ema(str(tmp_path / "a"), str(tmp_path / "a" / "ema.safetensors"))


def test_learning_rate_schedule():
    c = TrainConfig(lr=1e-3, warmup=10, steps=110, decay_start=10)
    assert c.lr_at(0) == pytest.approx(1e-4) and c.lr_at(9) == pytest.approx(1e-3)
    assert c.lr_at(60) == pytest.approx(0.5e-3) and c.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(lr=1e-3, warmup=10, steps=110).lr_at(100) == pytest.approx(1e-3)


def test_train_prior_cli_errors(tmp_path):
    from diffem.cli import main
    assert main(["train-prior", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert main(["train-prior", "--out", str(tmp_path / "r"), "--export-only"]) == 2
    assert main(["train-prior", "--out", str(tmp_path / "r"), "--steps", "0"]) == 2
    assert main(["train-prior", "--out", str(tmp_path / "r"), "--steps", "5", "--decay-start", "5"]) == 2


def test_configure_cpu_is_safe_to_repeat():
    from diffem.perf import bf16_supported, configure_cpu, configure_malloc
    a = configure_cpu()
    assert configure_cpu() == a
    assert isinstance(bf16_supported(), bool)
    import platform
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert configure_malloc() is True
