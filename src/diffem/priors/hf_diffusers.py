"""Hugging Face diffusers ``UNet2DModel`` ε-prediction checkpoints from a local folder (optional).

Needs ``pip install diffem[diffusers]`` (diffusers pulls huggingface_hub, not torchvision). The
folder is read with ``local_files_only=True`` (the hub is never contacted) and only safetensors
weights are loaded (``use_safetensors=True``: diffusers never falls back to a pickle then). A folder
with only ``diffusion_pytorch_model.bin`` is refused unless ``allow_bin=True``, which reads it with
``torch.load(weights_only=True)`` (no arbitrary unpickling) into a temporary safetensors copy.

Layouts: a model folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` [+
``scheduler_config.json``]) or a pipeline folder (``unet/``, ``scheduler/``, ``model_index.json``).
The β schedule comes from ``scheduler/scheduler_config.json``, else the folder's (or the UNet
folder's) ``scheduler_config.json``; missing keys take DDPMScheduler's defaults. With no scheduler
config at all, linear β 1e-4 … 0.02 with T = 1000 (DDPM's) is assumed.

Supported: pixel-space, unconditional ``UNet2DModel`` with ``prediction_type == "epsilon"``,
``beta_schedule`` linear | scaled_linear | squaredcos_cap_v2 (or explicit ``trained_betas``),
out_channels = in_channels or 2·in_channels (learned variance: ε is the first half). Refused:
v_prediction / sample models, zero-terminal-SNR schedules, other β schedules, class-conditional
UNets, latent pipelines (a ``vae``/``vqvae`` in ``model_index.json``), other UNet classes.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch
from torch import nn

from diffem.priors.base import Prior

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# DDPMScheduler's defaults for keys missing from a scheduler config (and the no-config assumption).
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                      "beta_schedule": "linear", "prediction_type": "epsilon"}
INSTALL_HINT = "diffusers is not installed: pip install diffem[diffusers]"
PREFIX = "diffusers:"


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return UNet2DModel


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"diffusers prior: {path!r} is not a JSON object")
    return data


def is_diffusers_folder(path) -> bool:
    """True for a folder with ``unet/config.json`` or a ``config.json`` of a ``UNet2DModel``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "unet", "config.json")):
        return True
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        return _read_json(cfg).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError):
        return False


class DiffusersEpsNetwork(nn.Module):
    """``network(x_t, t)`` with guided-diffusion's signature around a diffusers ``UNet2DModel``.

    x_t on [-1, 1] (B, C, H, W), t the original timestep indices (B,) int64; returns the UNet's
    ``.sample`` (ε, followed by the variance channels for a learned-variance model).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def betas_from_scheduler_config(config: dict, where: str = "scheduler config") -> np.ndarray:
    """The training β (float64 array of float32 values, as diffusers computes them) of a VP scheduler config.

    Raises ValueError for a prediction type other than "epsilon", an unsupported β schedule,
    ``rescale_betas_zero_snr`` (ᾱ_T = 0 has no ε ↔ x̂0 map) or a config without a β schedule.
    """
    prediction = config.get("prediction_type", SCHEDULER_DEFAULTS["prediction_type"])
    if prediction != "epsilon":
        raise ValueError(f"diffusers prior {where}: prediction_type {prediction!r} is not supported; diffem needs an "
                         "ε-prediction model (prediction_type 'epsilon'): v_prediction and sample models are refused")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"diffusers prior {where}: rescale_betas_zero_snr (ᾱ_T = 0) is not supported")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    else:
        if "beta_schedule" not in config:
            raise ValueError(f"diffusers prior {where}: no beta_schedule / trained_betas "
                             f"(class {config.get('_class_name', '?')}); a DDPM-type (VP) scheduler config is needed")
        schedule = config["beta_schedule"]
        T = int(config.get("num_train_timesteps") or SCHEDULER_DEFAULTS["num_train_timesteps"])
        start = float(config.get("beta_start", SCHEDULER_DEFAULTS["beta_start"]))
        end = float(config.get("beta_end", SCHEDULER_DEFAULTS["beta_end"]))
        if schedule == "linear":
            betas = torch.linspace(start, end, T, dtype=torch.float32)
        elif schedule == "scaled_linear":
            betas = torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float32) ** 2
        elif schedule == "squaredcos_cap_v2":  # GLIDE / improved-DDPM cosine, β capped at 0.999

            def abar(s: float) -> float:
                return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
                                 dtype=torch.float32)
        else:
            raise ValueError(f"diffusers prior {where}: beta_schedule {schedule!r} is not supported "
                             f"(supported: {', '.join(BETA_SCHEDULES)})")
    betas = betas.double().numpy()
    if betas.ndim != 1 or len(betas) < 2 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError(f"diffusers prior {where}: β must be a 1-D schedule with 0 < β < 1")
    return betas


def _scheduler_config(root: str, unet_dir: str, scheduler) -> tuple[dict, str]:
    """(config, where it came from); the assumed DDPM default when the folder has none."""
    if isinstance(scheduler, dict):
        return scheduler, "scheduler config (dict)"
    if scheduler is not None:
        path = os.fspath(scheduler)
        if os.path.isdir(path):
            path = os.path.join(path, "scheduler_config.json")
        return _read_json(path), path
    candidates = [os.path.join(root, "scheduler", "scheduler_config.json"), os.path.join(root, "scheduler_config.json"),
                  os.path.join(unet_dir, "scheduler_config.json")]
    for path in candidates:
        if os.path.isfile(path):
            return _read_json(path), path
    return dict(SCHEDULER_DEFAULTS), "assumed (no scheduler config): linear β 1e-4…0.02, T = 1000"


def _safetensors_copy_of_bin(unet_dir: str, variant: str | None, tmp: str, where: str) -> None:
    """Write config.json + the .bin weights as safetensors into ``tmp``; the .bin is read weights-only."""
    from safetensors.torch import save_file

    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    src = os.path.join(unet_dir, name + ".bin")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"diffusers prior {where}: allow_bin needs {name}.bin in {unet_dir!r} "
                                "(sharded .bin checkpoints are not supported)")
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"diffusers prior {where}: {src!r} is not a state dict of tensors")
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, os.path.join(tmp, name + ".safetensors"))
    shutil.copy(os.path.join(unet_dir, "config.json"), os.path.join(tmp, "config.json"))


def load_diffusers_prior(folder, device="cpu", subfolder: str | None = None, scheduler=None,
                         variant: str | None = None, allow_bin: bool = False, autocast_bf16: bool = False,
                         name: str | None = None) -> Prior:
    """A local diffusers ``UNet2DModel`` ε-prediction checkpoint as a ``Prior``.

    folder: a model folder or a pipeline folder (then the UNet is in ``unet/`` unless ``subfolder``
    says otherwise). scheduler: a scheduler_config.json path / folder or a dict overriding the one
    found in ``folder`` (see the module doc; none found: linear β 1e-4…0.02, T = 1000 is assumed).
    variant: diffusers' weight variant (e.g. "fp16"); weights are cast to float32. allow_bin: load
    a ``diffusion_pytorch_model.bin`` with ``torch.load(weights_only=True)`` when the folder has no
    safetensors (refused otherwise). The prior's ``multiple`` is 2^(number of down blocks − 1).
    """
    UNet2DModel = _require_diffusers()
    root = os.path.normpath(os.fspath(folder))
    where = repr(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"diffusers prior: {where} is not a folder (the hub is never used: download it first)")
    if subfolder is None and os.path.isfile(os.path.join(root, "unet", "config.json")):
        subfolder = "unet"
    unet_dir = os.path.join(root, subfolder) if subfolder else root
    config_path = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"diffusers prior {where}: no config.json in {unet_dir!r}")
    unet_config = _read_json(config_path)
    cls = unet_config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"diffusers prior {where}: the UNet is a {cls}; only unconditional UNet2DModel is supported")
    if unet_config.get("class_embed_type") is not None or unet_config.get("num_class_embeds") is not None:
        raise ValueError(f"diffusers prior {where}: class-conditional UNet2DModel is not supported")
    index_path = os.path.join(root, "model_index.json")
    if os.path.isfile(index_path):
        latent = [k for k in ("vae", "vqvae") if k in _read_json(index_path)]
        if latent:
            raise ValueError(f"diffusers prior {where}: a latent diffusion pipeline ({latent[0]} in model_index.json); "
                             "diffem needs a pixel-space prior")

    sched_config, sched_source = _scheduler_config(root, unet_dir, scheduler)
    betas = betas_from_scheduler_config(sched_config, where)

    has_safetensors = bool(glob.glob(os.path.join(unet_dir, "*.safetensors")))
    with tempfile.TemporaryDirectory(prefix="diffem-diffusers-") as tmp:
        if has_safetensors:
            unet = UNet2DModel.from_pretrained(root, subfolder=subfolder or None, variant=variant,
                                               local_files_only=True, use_safetensors=True, torch_dtype=torch.float32)
        else:
            bins = sorted(os.path.basename(p) for p in glob.glob(os.path.join(unet_dir, "*.bin")))
            if not bins:
                raise FileNotFoundError(f"diffusers prior {where}: no weights (*.safetensors) in {unet_dir!r}")
            if not allow_bin:
                raise ValueError(
                    f"diffusers prior {where}: only pickle weights ({', '.join(bins)}) in {unet_dir!r}; diffem loads "
                    "safetensors only. Convert once with diffusers (UNet2DModel.from_pretrained(...).save_pretrained("
                    "..., safe_serialization=True)) or pass allow_bin=True to read it with torch.load(weights_only=True)")
            _safetensors_copy_of_bin(unet_dir, variant, tmp, where)
            unet = UNet2DModel.from_pretrained(tmp, variant=variant, local_files_only=True, use_safetensors=True,
                                               torch_dtype=torch.float32)
    cfg = unet.config
    if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
        raise ValueError(f"diffusers prior {where}: out_channels={cfg.out_channels} is neither in_channels="
                         f"{cfg.in_channels} (ε) nor 2·in_channels (ε + learned variance)")
    unet = unet.float().eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    network = DiffusersEpsNetwork(unet).eval()
    prior = Prior(network, channels=int(cfg.in_channels), betas=betas,
                  name=name or f"{PREFIX}{os.path.basename(root)}", autocast_bf16=autocast_bf16).to(device)
    prior.eval()
    prior.multiple = 2 ** (len(cfg.down_block_types) - 1)  # H, W must be multiples of this
    prior.info = {"source": "diffusers", "folder": root, "subfolder": subfolder, "scheduler": sched_source,
                  "beta_schedule": sched_config.get("beta_schedule", "trained_betas"), "T": len(betas),
                  "learned_variance": cfg.out_channels == 2 * cfg.in_channels}
    return prior
