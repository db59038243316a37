"""sRGB <-> linear light. Camera shake blurs the scene's light, before the camera's tone curve:
``deblur_photo(..., linear_light=True)`` undoes the sRGB curve, deblurs, and re-applies it."""
from __future__ import annotations

import torch


def srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding curve (IEC 61966-2-1): encoded values in [0, 1] -> linear light."""
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding curve, the inverse of ``srgb_to_linear`` (clipped to [0, 1])."""
    v = v.clamp(0, 1)
    return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def srgb_slope(v: torch.Tensor) -> torch.Tensor:
    """d(linear)/d(encoded) of the sRGB curve at ``v``: how noise on the encoded values scales in linear light."""
    return torch.where(v <= 0.04045, torch.full_like(v, 1 / 12.92),
                       2.4 / 1.055 * ((v.clamp_min(0.04045) + 0.055) / 1.055) ** 1.4)


__all__ = ["srgb_to_linear", "linear_to_srgb", "srgb_slope"]
