"""The Plug-&-Play kernel prior: a small DnCNN-style Gaussian denoiser for blur kernels (paper Sec. 3.2,
Eq. 25: K_{j+1} = D_{√(λ/β)}(Z_{j+1})).

Architecture (the authors' ``FDnCNN(in_nc=2, out_nc=1, nb=5, nc=32)``): 5 conv 3×3 layers of 32
channels, ReLU between them, input [kernel, constant σ map], output the clean kernel directly
(no residual). 28,641 parameters with biases; ``bias=False`` gives the bias-free variant.

Scaling: a kernel of s×s pixels summing to 1 has values ~1/s² (1e-3 for 33×33), so the network
works on k·s² and σ·s² (values O(1)) and the output is divided by s² again. This is a fixed
reparametrisation, part of the model (``scale`` in the weights' metadata).

Call: ``D(k, sigma)`` with k (B,1,s,s) (also (B,s,s) or (s,s)) and sigma a float or a (B,) tensor;
returns the denoised kernels with k's shape, *not* projected on the simplex (the M-step does it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from diffem.files import atomic_write

FORMAT = "diffem-kernel-denoiser"
VERSION = "1"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_SIZES = (33, 64)


class KernelDenoiser(nn.Module):
    def __init__(self, size: int, channels: int = 32, depth: int = 5, bias: bool = True, scale: bool = True):
        super().__init__()
        if int(size) < 3:
            raise ValueError(f"size must be >= 3, got {size!r}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth!r}")
        self.size = int(size)
        self.channels = int(channels)
        self.depth = int(depth)
        self.bias = bool(bias)
        self.scale = bool(scale)
        layers: list[nn.Module] = [nn.Conv2d(2, channels, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, 1, 3, padding=1, bias=bias))
        self.model = nn.Sequential(*layers)  # same key names as the authors' FDnCNN (model.0 … model.8)

    @property
    def factor(self) -> float:
        return float(self.size * self.size) if self.scale else 1.0

    def forward(self, k: torch.Tensor, sigma) -> torch.Tensor:
        shape = k.shape
        if k.dim() == 2:
            k = k[None, None]
        elif k.dim() == 3:
            k = k[:, None]
        elif k.dim() != 4 or k.shape[1] != 1:
            raise ValueError(f"k must be (B,1,s,s), (B,s,s) or (s,s); got shape {tuple(shape)}")
        if k.shape[-1] != self.size or k.shape[-2] != self.size:
            raise ValueError(f"k: this denoiser is for {self.size}x{self.size} kernels, got "
                             f"{k.shape[-2]}x{k.shape[-1]}")
        return self.apply_net(k, sigma).reshape(shape)

    def apply_net(self, k: torch.Tensor, sigma) -> torch.Tensor:
        """The network on (B,1,h,w) kernels or kernel crops of any h×w (training uses crops); the
        input scaling always uses the model's size s."""
        B = k.shape[0]
        p = next(self.parameters())
        x = k.to(p.dtype)
        s = torch.as_tensor(sigma, dtype=p.dtype, device=p.device)
        if s.dim() == 0:
            s = s.expand(B)
        if s.shape != (B,):
            raise ValueError(f"sigma must be a float or a ({B},) tensor, got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError("sigma must be finite and non-negative")
        f = self.factor
        inp = torch.cat([x * f, (s * f)[:, None, None, None].expand_as(x)], dim=1)
        out = self.model(inp) / f
        return out.to(k.dtype)

    def metadata(self, **extra) -> dict[str, str]:
        meta = {"format": FORMAT, "version": VERSION, "size": str(self.size), "channels": str(self.channels),
                "depth": str(self.depth), "bias": str(int(self.bias)), "scale": str(int(self.scale))}
        meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in extra.items()})
        return meta


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_kernel_denoiser(model: KernelDenoiser, path, **metadata) -> str:
    """Write weights + metadata (size, σ range, version, …) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=model.metadata(**metadata)))


def read_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"kernel denoiser: {os.fspath(path)!r} is not a readable safetensors file ({e})") from None


def shipped_weights(size: int) -> Path:
    return WEIGHTS_DIR / f"kernel_denoiser_{int(size)}.safetensors"


def load_kernel_denoiser(size: int | None = 33, path=None, device="cpu") -> KernelDenoiser:
    """The shipped denoiser for ``size`` (33 or 64), or the weights at ``path``.

    Errors (ValueError): no shipped weights for that size; a file that is not a kernel-denoiser
    safetensors file (corrupt, other format); a file trained for another size than ``size``.
    """
    from safetensors.torch import load_file

    if path is None:
        if size is None or int(size) not in SHIPPED_SIZES:
            raise ValueError(f"size: no shipped kernel denoiser for size {size!r} "
                             f"(available: {', '.join(map(str, SHIPPED_SIZES))}); train one with "
                             f"`diffem train-kernel-denoiser --size N` and pass its path")
        path = shipped_weights(size)
        if not path.exists():
            raise FileNotFoundError(f"kernel denoiser weights missing from the installation: {path}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"kernel denoiser weights not found: {path}")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"kernel denoiser: {str(path)!r} is not a diffem kernel-denoiser file "
                         f"(metadata format={meta.get('format')!r})")
    try:
        file_size = int(meta["size"])
        model = KernelDenoiser(file_size, channels=int(meta.get("channels", 32)), depth=int(meta.get("depth", 5)),
                               bias=meta.get("bias", "1") == "1", scale=meta.get("scale", "1") == "1")
    except (KeyError, ValueError) as e:
        raise ValueError(f"kernel denoiser: bad metadata in {str(path)!r}: {e}") from None
    if size is not None and file_size != int(size):
        raise ValueError(f"size: {str(path)!r} holds a denoiser for {file_size}x{file_size} kernels, not {size}x{size}")
    try:
        state = load_file(str(path))
        model.load_state_dict(state)
    except Exception as e:
        raise ValueError(f"kernel denoiser: cannot load weights from {str(path)!r} ({e})") from None
    model.meta = meta
    model.eval().requires_grad_(False)
    return model.to(device)


def denoiser_sigma(lam: float, beta: float) -> float:
    """σ_d = √(λ/β), the noise level the HQS prior step (Eq. 25) asks the denoiser for."""
    return (lam / beta) ** 0.5
