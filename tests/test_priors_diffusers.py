"""The optional diffusers adapter on a tiny randomly initialised UNet2DModel (no hub, no downloads)."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from diffem.priors import load_prior  # noqa: E402
from diffem.priors.hf_diffusers import is_diffusers_folder, load_diffusers_prior  # noqa: E402


def tiny_unet(out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(32, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def save_pipeline(root, unet: UNet2DModel, **scheduler_kw):
    unet.save_pretrained(root / "unet", safe_serialization=True)
    DDPMScheduler(**scheduler_kw).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-ddpm")
    return save_pipeline(root, tiny_unet())


def test_eps_matches_diffusers_unet(folder):
    assert is_diffusers_folder(folder)
    prior = load_prior(str(folder))
    assert prior.name == f"diffusers:{folder.name}" and prior.channels == 3 and prior.T == 1000
    assert prior.multiple == 2 and not prior.training
    assert not any(p.requires_grad for p in prior.parameters())
    ref = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([3, 871])
    with torch.no_grad():
        want = ref(x, t).sample
        got = prior.eps(x, t)
    # same weights and input: only fp32 summation-order noise (~1e-6 with AVX-512 kernels) may differ
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-5
    # the "diffusers:" prefix and the unet subfolder itself load the same model
    with torch.no_grad():
        assert torch.equal(load_prior(f"diffusers:{folder}").eps(x, t), got)
        assert torch.equal(load_prior(str(folder / "unet")).eps(x, t), got)


@pytest.mark.parametrize("schedule", [{"beta_schedule": "linear"},
                                      {"beta_schedule": "squaredcos_cap_v2"},
                                      {"beta_schedule": "scaled_linear", "beta_start": 8.5e-4, "beta_end": 0.012,
                                       "num_train_timesteps": 500}])
def test_abar_matches_scheduler(tmp_path, schedule):
    # the scheduler config alone decides β: reuse one UNet folder, point ``scheduler`` at each config
    DDPMScheduler(**schedule).save_pretrained(tmp_path / "scheduler")
    unet_dir = tmp_path / "unet"
    tiny_unet().save_pretrained(unet_dir, safe_serialization=True)
    prior = load_diffusers_prior(tmp_path)
    want = DDPMScheduler.from_pretrained(tmp_path / "scheduler").alphas_cumprod
    assert prior.T == len(want) == schedule.get("num_train_timesteps", 1000)
    assert float((prior.abar - want).abs().max()) < 1e-6


def test_learned_variance_and_no_scheduler(tmp_path):
    tiny_unet(out_channels=6).save_pretrained(tmp_path, safe_serialization=True)  # model folder, no scheduler
    prior = load_prior(str(tmp_path))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        full = prior.network(x, t)
        assert full.shape[1] == 6 and torch.equal(prior.eps(x, t), full[:, :3])
    assert prior.T == 1000 and "assumed" in prior.info["scheduler"]
    assert float((prior.abar - DDPMScheduler().alphas_cumprod).abs().max()) < 1e-6


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_refuses_non_eps(tmp_path, prediction):
    save_pipeline(tmp_path, tiny_unet(), prediction_type=prediction)
    with pytest.raises(ValueError, match="epsilon") as e:
        load_prior(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_refuses_pickle_only_unless_weights_only(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    assert not list((tmp_path / "unet").glob("*.safetensors"))
    with pytest.raises(ValueError, match="safetensors only"):
        load_diffusers_prior(tmp_path)
    prior = load_diffusers_prior(tmp_path, allow_bin=True)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert float((prior.eps(x, t) - unet(x, t).sample).abs().max()) < 1e-5


def test_refuses_other_folders(tmp_path):
    save_pipeline(tmp_path, tiny_unet(), beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="sigmoid"):
        load_diffusers_prior(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "vqvae": ["x", "y"]}))
    with pytest.raises(ValueError, match="latent"):
        load_diffusers_prior(tmp_path, scheduler={"beta_schedule": "linear"})
    with pytest.raises(ValueError, match="preset"):
        load_prior(f"diffusers:{tmp_path}", preset="ffhq")
    with pytest.raises(FileNotFoundError):
        load_prior(f"diffusers:{tmp_path / 'missing'}")


def test_deblur_runs(folder):
    import diffem

    prior = load_prior(str(folder))
    y = torch.rand(3, 16, 16)
    out = diffem.deblur(y, 0.05, prior=prior, method="fast-em-pigdm", steps=3, kernel_size=5, kernel_prior="l2", progress=False,
                        device="cpu")
    assert out.image.shape == y.shape and torch.isfinite(out.image).all()
    assert out.info["prior"] == f"diffusers:{folder.name}"
    with pytest.raises(ValueError, match="multiples of 2"):
        diffem.deblur(torch.rand(3, 15, 16), 0.05, prior=prior, method="fast-em-pigdm", steps=3, kernel_size=5, kernel_prior="l2",
                      progress=False, device="cpu")
