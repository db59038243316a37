"""Image priors: ``load_prior(name_or_path)`` returns a ``Prior``.

Names: ``"gaussian"`` (exact analytic prior, for tests), ``"default"`` (the small natural-image
UNet shipped with diffem), ``"hybrid"`` (the default UNet with FFDNet's x̂0 at the noise levels FFDNet
was trained for, ``priors/hybrid.py``). A path loads a guided-diffusion ADM checkpoint (.pt / .safetensors);
``"diffusers:FOLDER"``, or a folder with ``unet/config.json`` or a ``UNet2DModel`` ``config.json``,
loads a local Hugging Face diffusers ε-prediction checkpoint (optional extra ``diffem[diffusers]``).
"""
from __future__ import annotations

import os

from diffem.priors.base import Prior

PRIOR_NAMES = ("default", "gaussian", "hybrid")


def load_prior(name_or_path, preset: str | None = None, device="cpu", **overrides) -> Prior:
    """The prior for a name, a path or a ``Prior`` (moved to ``device``), in eval mode with frozen
    parameters (sampling differentiates through the network, never trains it)."""
    return _load(name_or_path, preset, device, **overrides).eval().requires_grad_(False)


def _load(name_or_path, preset, device, **overrides) -> Prior:
    if isinstance(name_or_path, Prior):
        return name_or_path.to(device)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"prior: expected a name {PRIOR_NAMES}, a path or a Prior, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if name == "gaussian":
        from diffem.priors.gaussian import GaussianPrior
        return GaussianPrior(**overrides).to(device)
    if name == "default":
        from diffem.priors.default import load_default_prior
        return load_default_prior(device=device, **overrides)
    if name == "hybrid":
        from diffem.priors.default import load_default_prior
        from diffem.priors.hybrid import hybrid_prior
        return hybrid_prior(load_default_prior(device=device, **overrides))
    if name.startswith("diffusers:") or os.path.isdir(name):
        from diffem.priors.hf_diffusers import PREFIX, is_diffusers_folder, load_diffusers_prior
        if name.startswith(PREFIX) or is_diffusers_folder(name):
            if preset is not None:
                raise ValueError("preset: applies to guided-diffusion checkpoints, not to diffusers folders")
            return load_diffusers_prior(name.removeprefix(PREFIX), device=device, **overrides)
    if os.path.exists(name):
        from diffem.priors.adm import load_adm_prior
        return load_adm_prior(name, preset=preset, device=device, **overrides)
    raise ValueError(f"prior: unknown prior name or missing file {name!r} (names: {', '.join(PRIOR_NAMES)}, "
                     "a checkpoint path or diffusers:FOLDER)")


__all__ = ["Prior", "load_prior", "PRIOR_NAMES"]
