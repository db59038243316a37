"""The default natural-image prior shipped with diffem (no download).

A small ε-prediction ADM UNet (32 base channels, levels (1,2,2,2), one ResBlock per level,
no attention: any size that is a multiple of 8, cost linear in pixels) trained here on
random 64×64 crops of CBSD432 with ``diffem train-prior``; see docs/model-card-default-prior.md.
The architecture is stored in the safetensors metadata (``adm_config``).
"""
from __future__ import annotations

import json
import os

import torch

from diffem.priors.base import Prior

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "default_prior.safetensors")


def default_weights_path() -> str:
    """``$DIFFEM_DEFAULT_PRIOR`` if set, else the packaged weights."""
    return os.environ.get("DIFFEM_DEFAULT_PRIOR", WEIGHTS_PATH)


def load_default_prior(device="cpu", autocast_bf16: bool | None = None, channels_last: bool | None = None,
                       path: str | None = None) -> Prior:
    """The packaged default prior as a ``Prior`` (linear β, T = 1000, 3 channels).

    ``autocast_bf16`` / ``channels_last``: None = on where bf16 is native (AMX / AVX512-BF16 CPUs,
    CUDA), off elsewhere (emulated bf16 is many times slower than fp32).
    """
    from diffem.perf import bf16_supported, configure_cpu
    from diffem.priors.adm import ADMUNet, CheckpointError, make_config, read_state_dict

    path = path or default_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"default prior: weights file {path!r} is missing. It is part of the diffem package "
            "(src/diffem/weights/default_prior.safetensors); reinstall diffem, or train one with "
            "`diffem train-prior --export PATH` and set DIFFEM_DEFAULT_PRIOR=PATH.")
    sd, metadata = read_state_dict(path)
    if "adm_config" not in metadata:
        raise CheckpointError(f"default prior: {path!r} has no adm_config metadata (not exported by diffem?)")
    config = make_config(**json.loads(metadata["adm_config"]))
    net = ADMUNet(config)
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    device = torch.device(device)
    if device.type == "cpu":
        configure_cpu()
    fast_bf16 = bf16_supported() if device.type == "cpu" else device.type == "cuda"
    if autocast_bf16 is None:
        autocast_bf16 = fast_bf16
    if channels_last is None:
        channels_last = autocast_bf16
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    prior = Prior(net, channels=config.in_channels, name="default", autocast_bf16=autocast_bf16).to(device)
    prior.info = json.loads(metadata.get("diffem_prior", "{}"))
    return prior
