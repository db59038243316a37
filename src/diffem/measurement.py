"""The measurement layer: every user argument is converted and checked here, once, where it enters
(``diffem.deblur``/``restore``, ``realphoto.deblur_photo``, the peers, the CLI). Each check raises a
``ValueError`` that starts with the argument's name (the CLI prints it as one line, exit code 2).

Image layouts (one convention, whatever the caller):
  * torch tensors are (H, W), (C, H, W) or (1, C, H, W), as everywhere in torch;
  * numpy arrays are (H, W) or (H, W, C), as PIL, imageio and matplotlib give images.
``as_image`` turns either into a (1, C, H, W) floating-point tensor (a copy).

Other arguments: σ (``parse_sigma``: a number, ``'5/255'`` or ``'auto'``, on the [0, 1] scale),
kernel sizes (``check_kernel_size``: an integer ≥ 3, no larger than the image; even sizes such as
the paper's 64 are allowed, the kernel's centre being ⌊k/2⌋ either way), kernels (``check_kernel``),
boundaries (``check_boundary``: ``'circular'`` or ``'valid'``), devices (``resolve_device``).
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch

# circular: y = k ⊛ x with wrap-around (the paper's synthetic protocol).
# valid: y is the valid part of k ⊛ x for a larger scene (real photos): the scene beyond y is unknown.
BOUNDARIES = ("circular", "valid")
_RENAMED_BOUNDARIES = {"periodic": "circular", "symmetric": "valid"}   # names of diffem ≤ 0.1
SIGMA_MAX = 0.5     # noise std on the [0, 1] scale; anything larger is a unit mistake (5 for 5/255)
MIN_IMAGE_SIZE = 8


def as_image(y, name: str = "y", dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """One image as a (1, C, H, W) tensor of ``dtype`` on ``device`` (default: where it is), a copy.

    Accepts (H, W), (C, H, W), (1, C, H, W) tensors and (H, W), (H, W, C) numpy arrays of floats
    (values on [0, 1]; a measurement may exceed it slightly). Raises ValueError naming ``name``.
    """
    if isinstance(y, np.ndarray):
        if y.ndim == 3 and y.shape[-1] > 4 and y.shape[0] <= 4:
            raise ValueError(f"{name}: numpy arrays are (H, W) or (H, W, C), like images from PIL or imageio; "
                             f"shape {y.shape} looks like (C, H, W): pass np.moveaxis({name}, 0, -1) or a torch tensor")
        if y.ndim not in (2, 3):
            raise ValueError(f"{name}: expected a numpy array of shape (H, W) or (H, W, C), got {y.shape}")
        a = y[..., None] if y.ndim == 2 else y
        y = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    elif not isinstance(y, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor or a numpy array, got {type(y).__name__}")
    elif y.dim() == 4:
        if y.shape[0] != 1:
            raise ValueError(f"{name}: one image at a time, got a batch of {y.shape[0]}")
        y = y[0]
    elif y.dim() == 2:
        y = y[None]
    elif y.dim() != 3:
        raise ValueError(f"{name}: expected a tensor of shape (H, W), (C, H, W) or (1, C, H, W), got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point image on [0, 1], got dtype {y.dtype} "
                         "(divide 8-bit pixels by 255)")
    if y.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device (it holds no data)")
    if not torch.isfinite(y).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return y.to(device=y.device if device is None else device, dtype=dtype, copy=True)[None]


def as_measurement(y, channels: int | None, device=None) -> tuple[torch.Tensor, bool]:
    """y as (1, channels, H, W) float32 on ``device`` (a copy) and whether it was grayscale.

    Grayscale input, (H, W), (1, H, W) or (H, W, 1), is replicated to the prior's channels; the
    caller averages the result back to one channel. ``channels=None``: 1 or 3 channels, kept as given
    (for the denoiser-based methods, whose denoisers take either).
    """
    y = as_image(y, "y", device=device)
    gray = channels is not None and y.shape[1] == 1 and channels != 1
    if gray:
        y = y.expand(-1, channels, -1, -1).contiguous()
    if y.shape[1] not in ((1, 3) if channels is None else (channels,)):
        hint = " (torch tensors are (C, H, W))" if y.shape[-1] in (1, 3) else ""
        need = "1 (grey) or 3 (RGB)" if channels is None else f"{channels} (or 1 for grayscale)"
        raise ValueError(f"y: expected {need} channels, got {y.shape[1]}{hint}")
    if min(y.shape[-2:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"y: image of size {tuple(y.shape[-2:])} is too small (at least {MIN_IMAGE_SIZE} pixels a side)")
    return y, gray


def parse_sigma(value, name: str = "sigma", allow_auto: bool = False, allow_zero: bool = False) -> float | str:
    """σ on the [0, 1] scale from a number, a fraction ``'5/255'`` or (with ``allow_auto``) ``'auto'``.

    Must lie in (0, 0.5) (or [0, 0.5) with ``allow_zero``, for methods that ignore σ)."""
    if isinstance(value, str) and value.strip().lower() == "auto" and allow_auto:
        return "auto"
    try:
        if isinstance(value, bool):
            raise TypeError
        num, _, den = value.partition("/") if isinstance(value, str) else (value, "", "")
        s = float(num) / float(den) if den else float(num)
    except (TypeError, ValueError, ZeroDivisionError):
        auto = "'auto', " if allow_auto else ""
        raise ValueError(f"{name}: expected {auto}a number like 0.02 or a fraction like 5/255, got {value!r}") from None
    low_ok = s >= 0 if allow_zero else s > 0
    if not math.isfinite(s) or not low_ok or s >= SIGMA_MAX:
        bound = "[0, 0.5)" if allow_zero else "(0, 0.5)"
        raise ValueError(f"{name}: must be in {bound}: the noise std on the [0, 1] scale (e.g. 5/255), got {value!r}")
    return s


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_choice(value, choices, name: str):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_saturation(level, name: str = "saturation") -> float:
    """A clipping level in (0.5, 1]: values ≥ level or ≤ 1 − level count as clipped."""
    try:
        v = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0.5, 1], got {level!r}") from None
    if not 0.5 < v <= 1:
        raise ValueError(f"{name}: must be in (0.5, 1] (1 = only exactly clipped values), got {level!r}")
    return v


def check_kernel_size(value, image_shape=None, name: str = "kernel_size") -> int:
    """An integer ≥ 3 that fits in an image of ``image_shape`` (H, W) when given."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < 3:
        raise ValueError(f"{name}: must be >= 3, got {value}")
    if image_shape is not None and value > min(image_shape[-2:]):
        H, W = image_shape[-2:]
        raise ValueError(f"{name}: the image ({W}x{H}) is smaller than the kernel size {value}")
    return int(value)


def check_kernel(kernel, name: str = "kernel", device=None, normalise: bool = False) -> torch.Tensor:
    """A (k, k) blur kernel as float32 on ``device`` (a copy); any float dtype and device are accepted.

    Square, finite, non-negative; it must sum to 1 (within 1e-3), or, with ``normalise``, have a
    positive sum and is divided by it (a starting kernel, e.g. ``kernel_init``).
    """
    if isinstance(kernel, np.ndarray):
        kernel = torch.from_numpy(np.ascontiguousarray(kernel))
    if not isinstance(kernel, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor or numpy array, got {type(kernel).__name__}")
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"{name}: expected a square (k, k) array, got shape {tuple(kernel.shape)}")
    if not kernel.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values, got dtype {kernel.dtype}")
    if kernel.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device (it holds no data)")
    if not torch.isfinite(kernel).all() or (kernel < 0).any():
        raise ValueError(f"{name}: must be finite and non-negative")
    total = float(kernel.sum())
    if normalise:
        if total <= 0:
            raise ValueError(f"{name}: must not be all zero")
        return kernel.to(device=device, dtype=torch.float32) / total
    if abs(total - 1) > 1e-3:
        raise ValueError(f"{name}: must sum to 1, got {total:.6g}")
    return kernel.to(device=device, dtype=torch.float32, copy=True)


def check_boundary(value, name: str = "boundary") -> str:
    if value in _RENAMED_BOUNDARIES:
        raise ValueError(f"{name}: {value!r} is now called {_RENAMED_BOUNDARIES[value]!r} "
                         f"(boundaries: {', '.join(BOUNDARIES)})")
    return check_choice(value, BOUNDARIES, name)


def resolve_device(device="auto", name: str = "device") -> torch.device:
    """'auto' (or None): the GPU when there is one (``cuda:$LOCAL_RANK`` under torchrun), else the CPU."""
    if device in (None, "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")
        return torch.device(f"cuda:{local}" if local is not None else "cuda")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: 'cuda' was asked for but no CUDA GPU is available")
    return dev
