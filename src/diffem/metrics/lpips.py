"""LPIPS (Zhang et al. 2018) in plain torch, only with user-supplied weights (nothing is downloaded).

Two files are needed, because diffem ships neither:
  * the backbone: torchvision's ImageNet AlexNet (``alexnet-owt-7be5be79.pth``) or VGG-16
    (``vgg16-397923af.pth``) state dict — diffem rebuilds the ``features`` stack itself, so
    torchvision is not required;
  * the LPIPS linear heads (``alex.pth`` / ``vgg.pth``, v0.1, a few kB) from the ``lpips`` package
    (``lpips/weights/v0.1/``) or torchmetrics (``functional/image/lpips_models/``). If ``lin_path`` is
    not given, diffem looks for them in an installed ``lpips`` or ``torchmetrics`` package.
Files are loaded with ``torch.load(weights_only=True)``. Inputs are [0,1] images; lower = closer.
"""
from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn as nn

# (in, out, kernel, stride, padding) of the conv layers and the positions of max-pools, torchvision order.
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool",),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool",)]
_ALEX_TAPS = (1, 4, 7, 9, 11)          # outputs of relu1..relu5
_ALEX_CH = (64, 192, 384, 256, 256)
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_VGG_TAPS = (3, 8, 15, 22, 29)         # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG_CH = (64, 128, 256, 512, 512)


def _alex_features() -> nn.Sequential:
    layers = []
    for spec in _ALEX:
        if spec[0] == "conv":
            layers.append(nn.Conv2d(spec[1], spec[2], spec[3], stride=spec[4], padding=spec[5]))
        elif spec[0] == "relu":
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*layers)


def _vgg_features() -> nn.Sequential:
    layers, c = [], 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def find_lin_weights(net: str) -> str | None:
    """Path of the LPIPS v0.1 linear heads inside an installed lpips/torchmetrics package, if any."""
    for pkg, rel in (("lpips", ("weights", "v0.1")), ("torchmetrics", ("functional", "image", "lpips_models"))):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            path = os.path.join(list(spec.submodule_search_locations)[0], *rel, f"{net}.pth")
            if os.path.exists(path):
                return path
    return None


class LPIPS(nn.Module):
    """``LPIPS(backbone_path, net="alex"|"vgg", lin_path=None)(x, y)`` -> (B,) distances, x, y in [0,1]."""

    def __init__(self, backbone_path: str, net: str = "alex", lin_path: str | None = None, device="cpu"):
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ValueError(f"net: expected 'alex' or 'vgg', got {net!r}")
        if not backbone_path or not os.path.exists(backbone_path):
            raise FileNotFoundError(f"LPIPS backbone weights not found: {backbone_path!r} (torchvision "
                                    f"{'alexnet-owt-7be5be79.pth' if net == 'alex' else 'vgg16-397923af.pth'})")
        lin_path = lin_path or find_lin_weights(net)
        if not lin_path or not os.path.exists(lin_path):
            raise FileNotFoundError(f"LPIPS linear heads ({net}.pth, v0.1) not found: pass lin_path, or install "
                                    "the 'lpips' or 'torchmetrics' package that ships them")
        self.net = net
        self.features = _alex_features() if net == "alex" else _vgg_features()
        self.taps = _ALEX_TAPS if net == "alex" else _VGG_TAPS
        chans = _ALEX_CH if net == "alex" else _VGG_CH
        sd = torch.load(backbone_path, map_location="cpu", weights_only=True)
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        self.features.load_state_dict(sd)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in chans)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        for i, conv in enumerate(self.lins):
            conv.weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        # LPIPS' input scaling layer (ImageNet statistics expressed on [-1, 1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval().to(device)

    def _feats(self, x):
        h = (x * 2 - 1 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i == self.taps[-1]:
                break
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x, y = x[None], y[None]
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        dev = self.shift.device
        fx, fy = self._feats(x.float().to(dev)), self._feats(y.float().to(dev))
        d = sum(lin((a - b) ** 2).mean(dim=(2, 3)) for lin, a, b in zip(self.lins, fx, fy))
        return d.flatten().double().cpu()
