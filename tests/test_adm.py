"""ADM UNet re-implementation vs guided-diffusion reference fixtures (tests/data/adm_*)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from diffem.priors import Prior, load_prior
from diffem.priors.adm import (ADMUNet, CheckpointError, convert_checkpoint, load_adm_network, load_adm_prior,
                               make_config)

DATA = os.path.join(os.path.dirname(__file__), "data")


def manifest(name):
    with open(os.path.join(DATA, f"adm_{name}_manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny():
    m = manifest("tiny")
    net = ADMUNet(make_config(**m["config"]))
    sd = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(DATA, "adm_tiny_state_dict.npz")).items()}
    net.load_state_dict(sd, strict=True)
    return net.eval(), sd, m


@pytest.mark.parametrize("name,preset", [("ffhq256", "ffhq256"), ("imagenet256_uncond", "imagenet256-uncond")])
def test_preset_reproduces_manifest_keys_and_shapes(name, preset):
    m = manifest(name)
    with torch.device("meta"):  # no 94M / 550M-parameter allocation
        net = ADMUNet(make_config(preset))
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == m["state_dict"]  # same keys, same order, same shapes
    assert sum(p.numel() for p in net.parameters()) == m["num_parameters"]
    assert make_config(preset).to_dict()["num_channels"] == m["config"]["num_channels"]


def test_tiny_manifest(tiny):
    net, _, m = tiny
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == m["state_dict"]


def test_tiny_reference_outputs(tiny):
    net = tiny[0]
    io = np.load(os.path.join(DATA, "adm_tiny_io.npz"))
    with torch.no_grad():
        y = net(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
        y2 = net(torch.from_numpy(io["x2"]), torch.from_numpy(io["t2"]))  # non-square 48x64
    assert y.shape == (2, 6, 32, 32) and y2.shape == (1, 6, 48, 64)
    assert (y - torch.from_numpy(io["y"])).abs().max() <= 1e-5
    assert (y2 - torch.from_numpy(io["y2"])).abs().max() <= 1e-5


def test_timestep_matters_and_size_check(tiny):
    net = tiny[0]
    io = np.load(os.path.join(DATA, "adm_tiny_io.npz"))
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    with torch.no_grad():
        assert (net(x, t + 1) - torch.from_numpy(io["y"])).abs().max() > 1e-4
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 30, 32), torch.tensor([0]))


def test_overrides_and_bad_flag():
    cfg = make_config("ffhq256", num_channels=64, learn_sigma=False, channel_mult="1,2", attention_resolutions="")
    assert cfg.out_channels == 3 and cfg.resolved_channel_mult() == (1, 2)
    net = ADMUNet(cfg, middle_attention=False)
    out = net(torch.zeros(1, 3, 8, 12), torch.tensor([5]))
    assert out.shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="num_chanels"):
        make_config(num_chanels=3)
    with pytest.raises(ValueError, match="preset"):
        make_config("ffhq512")


def test_pixel_unshuffle_runs_the_unet_on_subimages():
    """pixel_unshuffle=2 (diffem flag): the UNet body is the r=1 UNet on 4·C-channel half-size
    sub-images, wrapped by pixel_unshuffle / pixel_shuffle; size multiple becomes r·2^(levels−1)."""
    kw = dict(num_channels=32, channel_mult="1,2", learn_sigma=False, attention_resolutions="",
              middle_attention=False, resblock_updown=False, conv_resample=False)
    torch.manual_seed(0)
    net = ADMUNet(make_config(pixel_unshuffle=2, **kw))
    body = ADMUNet(make_config(in_channels=12, **kw))
    body.load_state_dict(net.state_dict())
    for p in list(net.parameters()) + list(body.parameters()):   # the output conv starts at zero
        torch.nn.init.normal_(p, std=0.05)
    body.load_state_dict(net.state_dict())
    assert net.multiple == 4 and net.config.multiple == 4
    x, t = torch.randn(2, 3, 12, 16), torch.tensor([3, 700])
    with torch.no_grad():
        out = net(x, t)
        ref = torch.nn.functional.pixel_shuffle(body(torch.nn.functional.pixel_unshuffle(x, 2), t), 2)
    assert out.shape == x.shape and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 12, 14), t[:1])


def test_pt_roundtrip_and_conversion(tmp_path, tiny):
    net, sd, m = tiny
    pt = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), pt)
    overrides = m["config"]
    prior = load_adm_prior(pt, **overrides)
    assert isinstance(prior, Prior) and prior.channels == 3
    io = np.load(os.path.join(DATA, "adm_tiny_io.npz"))
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    with torch.no_grad():
        assert torch.equal(prior.network(x, t), net(x, t))
        assert torch.allclose(prior.eps(x, t), torch.from_numpy(io["y"][:, :3]), atol=1e-5)
    # .pt -> .safetensors keeps the config in the metadata: no flags needed to load it back
    st = tmp_path / "tiny.safetensors"
    convert_checkpoint(pt, st, **overrides)
    prior2 = load_prior(str(st))
    with torch.no_grad():
        assert torch.equal(prior2.network(x, t), net(x, t))
    # CLI
    from diffem.cli import main
    st2 = tmp_path / "tiny2.safetensors"
    assert main(["convert-checkpoint", str(pt), str(st2), "--adm", json.dumps(overrides)]) == 0
    assert main(["convert-checkpoint", str(pt), str(st2), "--adm", json.dumps(overrides)]) == 2  # exists


def test_mismatch_lists_keys(tmp_path, tiny):
    net = tiny[0]
    pt = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(CheckpointError) as e:
        load_adm_network(pt, preset="ffhq256")
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "shape mismatches" in msg
    assert '"num_channels": 128' in msg  # the config tried


def test_refuses_pickled_objects_and_corrupt_files(tmp_path, tiny):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing"):
        load_adm_prior(bad)
    # a torch file holding a non-tensor object (an nn.Module) is refused too
    mod = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), mod)
    with pytest.raises(CheckpointError, match="refusing"):
        load_adm_prior(mod)
    # truncated torch zip and truncated safetensors
    pt = tmp_path / "tiny.pt"
    torch.save(tiny[0].state_dict(), pt)
    data = pt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_adm_prior(tmp_path / "trunc.pt")
    st = tmp_path / "tiny.safetensors"
    convert_checkpoint(pt, st, **manifest("tiny")["config"])
    data = st.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_adm_prior(tmp_path / "trunc.safetensors")
    with pytest.raises(FileNotFoundError):
        load_adm_prior(tmp_path / "nope.pt")
