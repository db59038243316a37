"""ADM: a re-implementation of guided-diffusion's ``UNetModel`` (Dhariwal & Nichol 2021).

The module names, parameter names and shapes are those of openai/guided-diffusion, so its
public checkpoints (e.g. the FFHQ-256 ``ffhq_10m.pt`` used by DPS / Fast Diffusion EM, or the
ImageNet-256 unconditional model) load with ``strict=True`` and compute the same function.

``network(x, t)``: x (B, C, H, W) in [-1, 1], t (B,) int64 original timestep indices;
returns (B, out_channels, H, W) with ε in the first ``in_channels`` channels and, when
``learn_sigma``, the variance interpolation after them. Any H, W divisible by
2^(len(channel_mult) - 1) works (non-square too); ``image_size`` only fixes which
downsampling factors get attention (ds = image_size // resolution), as in ``create_model``.

Loading: ``load_adm_prior(path)`` reads .safetensors, or a .pt with
``torch.load(weights_only=True)`` (never unpickles arbitrary objects).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffem.files import atomic_write
from diffem.priors.base import Prior

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class ADMConfig:
    """guided-diffusion ``create_model`` flags (same names, same semantics)."""

    image_size: int = 256
    num_channels: int = 128
    num_res_blocks: int = 1
    channel_mult: str | Sequence[float] = ""
    learn_sigma: bool = True
    class_cond: bool = False
    num_classes: int = 1000
    attention_resolutions: str | Sequence[int] = "16"
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    resblock_updown: bool = True
    use_fp16: bool = False  # accepted for compatibility; use Prior(autocast_bf16=True) instead
    use_new_attention_order: bool = False
    in_channels: int = 3
    # Not a guided-diffusion flag: guided-diffusion always has attention in the middle block.
    # False drops it (the small default prior uses no attention at all).
    middle_attention: bool = True
    conv_resample: bool = True  # used only when resblock_updown is False
    # Not a guided-diffusion flag: >1 runs the UNet on pixel-unshuffled r×r sub-images (FFDNet's
    # trick, Zhang et al. 2018): r² fewer pixels per layer, so ~r² cheaper at the same widths.
    pixel_unshuffle: int = 1

    def resolved_channel_mult(self) -> tuple:
        cm = self.channel_mult
        if isinstance(cm, str):
            if cm == "":
                defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                            64: (1, 2, 3, 4)}
                if self.image_size not in defaults:
                    raise ValueError(f"channel_mult: no default for image_size {self.image_size}; give it explicitly")
                return defaults[self.image_size]
            cm = [c for c in cm.split(",") if c.strip()]
        out = tuple(float(c) if float(c) != int(float(c)) else int(float(c)) for c in cm)
        if not out:
            raise ValueError("channel_mult: empty")
        return out

    def attention_ds(self) -> tuple:
        ar = self.attention_resolutions
        if isinstance(ar, str):
            ar = [a for a in ar.split(",") if a.strip()]
        return tuple(self.image_size // int(r) for r in ar)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return self.pixel_unshuffle * 2 ** (len(self.resolved_channel_mult()) - 1)

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("channel_mult", "attention_resolutions"):
            if not isinstance(d[k], str):
                d[k] = ",".join(str(v) for v in d[k])
        return d


# Presets read from the guided-diffusion configs (fixtures/adm manifests).
PRESETS = {
    "ffhq256": dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="", learn_sigma=True,
                    attention_resolutions="16", num_heads=4, num_head_channels=64, num_heads_upsample=-1,
                    use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_new_attention_order=False),
    "imagenet256-uncond": dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True,
                               attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
                               num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True,
                               use_new_attention_order=False),
}


def make_config(preset: str | None = None, **overrides) -> ADMConfig:
    base = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: unknown ADM preset {preset!r} (known: {', '.join(PRESETS)})")
        base = dict(PRESETS[preset])
    fields = {f.name for f in dataclasses.fields(ADMConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"overrides: unknown ADM flag(s) {', '.join(bad)} (known: {', '.join(sorted(fields))})")
    base.update(overrides)
    return ADMConfig(**base)


# ---------------------------------------------------------------------------------------------
# Building blocks


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as guided-diffusion), returned in the input dtype."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] order, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x) if self.use_conv else F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            # resample between the activation and the conv, on both paths (guided-diffusion order)
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"num_head_channels: {num_head_channels} does not divide {channels} channels")
            self.num_heads = channels // num_head_channels
        self.new_order = use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, heads = qkv.shape[-1], self.num_heads
        ch = c // heads
        if self.new_order:  # [q (all heads) | k | v]
            q, k, v = (z.reshape(b * heads, ch, length) for z in qkv.chunk(3, dim=1))
        else:  # legacy: channels grouped per head as [q_h | k_h | v_h]
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        # softmax(q^T k / √ch) v, the same math as QKVAttention(Legacy) (scale 1/⁴√ch on q and k)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


# ---------------------------------------------------------------------------------------------
# The UNet


class ADMUNet(nn.Module):
    def __init__(self, config: ADMConfig | None = None, **overrides):
        super().__init__()
        cfg = config if config is not None else make_config(**overrides)
        if config is not None and overrides:
            cfg = dataclasses.replace(config, **overrides)
        self.config = cfg
        mult = cfg.resolved_channel_mult()
        attn_ds = cfg.attention_ds()
        mc = cfg.num_channels
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        ted = 4 * mc
        self.model_channels = mc
        self.levels = len(mult)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, ted, cfg.dropout, out_channels=ch_out,
                            use_scale_shift_norm=cfg.use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=cfg.num_head_channels,
                                  use_new_attention_order=cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(cfg.num_classes, ted)

        ch = input_ch = int(mult[0] * mc)
        r2 = cfg.pixel_unshuffle ** 2
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels * r2, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2

        middle = [res(ch, ch)]
        if cfg.middle_attention:
            middle.append(attn(ch, cfg.num_heads))
        middle.append(res(ch, ch))
        self.middle_block = TimestepEmbedSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(mc * m))]
                ch = int(mc * m)
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, cfg.out_channels * r2, 3, padding=1)))

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"x: height and width must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.config.class_cond:
            if y is None:
                raise ValueError("y: a class-conditional ADM needs class labels")
            emb = emb + self.label_emb(y)
        r = self.config.pixel_unshuffle
        hs = []
        h = F.pixel_unshuffle(x, r) if r > 1 else x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.out(h)
        return F.pixel_shuffle(h, r) if r > 1 else h


# ---------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(ValueError):
    pass


def read_state_dict(path) -> tuple[dict, dict]:
    """Tensors and metadata from a .safetensors file or a tensors-only torch file (.pt/.pth).

    A pickled file holding anything other than tensors/containers is refused
    (``torch.load(weights_only=True)``); a truncated or corrupt file gives a CheckpointError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    with open(path, "rb") as f:
        head = f.read(16)
    metadata: dict = {}
    if path.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for bad headers / sizes
            raise CheckpointError(f"checkpoint: {path!r} is not a valid safetensors file ({e})") from None
        return sd, metadata
    import pickle
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint: refusing {path!r}: it pickles objects other than tensors, which could run code "
            f"(loaded with weights_only=True). Convert it where you trust it to a plain state_dict or "
            f".safetensors. Details: {str(e).splitlines()[0]}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint: cannot read {path!r} as a torch file (corrupt or truncated?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    # common wrappers: {"state_dict": ...}, {"model": ...}, {"ema": ...}
    if isinstance(obj, dict):
        for key in ("ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict) and not torch.is_tensor(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"checkpoint: {path!r} does not hold a flat state_dict of tensors")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    return sd, metadata


def config_from_metadata(metadata: dict) -> dict | None:
    if "adm_config" in metadata:
        return json.loads(metadata["adm_config"])
    return None


def guess_preset(sd: dict) -> str | None:
    """Pick the preset whose shapes match (by the first conv width and the number of keys)."""
    for name in PRESETS:
        with torch.device("meta"):
            ref = ADMUNet(make_config(name)).state_dict()
        if set(ref) == set(sd) and all(tuple(ref[k].shape) == tuple(sd[k].shape) for k in ref):
            return name
    return None


def build_from_state_dict(sd: dict, config: ADMConfig) -> ADMUNet:
    with torch.device("meta"):
        net = ADMUNet(config)
    ref = net.state_dict()
    missing = sorted(set(ref) - set(sd))
    unexpected = sorted(set(sd) - set(ref))
    shape_bad = sorted(k for k in set(ref) & set(sd) if tuple(ref[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape_bad:
        def show(keys, n=8):
            return ", ".join(keys[:n]) + (f" … (+{len(keys) - n})" if len(keys) > n else "") if keys else "none"
        raise CheckpointError(
            "checkpoint: does not match the ADM config tried "
            f"{json.dumps(config.to_dict())}: missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
            "shape mismatches: " + show([f"{k} {tuple(sd[k].shape)} vs {tuple(ref[k].shape)}" for k in shape_bad])
            + ". Pass preset=... or the right flags (num_channels, channel_mult, ...).")
    net = ADMUNet(config)
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return net.eval()


def load_adm_network(path, preset: str | None = None, device="cpu", **overrides) -> ADMUNet:
    sd, metadata = read_state_dict(path)
    stored = config_from_metadata(metadata)
    if preset is None and stored is None and not overrides:
        preset = guess_preset(sd)
        if preset is None:
            preset = "ffhq256"  # the checkpoint Fast Diffusion EM uses; a mismatch lists the keys
    base = dict(stored or {})
    if preset is not None:
        base.update(PRESETS[preset] if preset in PRESETS else make_config(preset).to_dict())
    base.update(overrides)
    return build_from_state_dict(sd, make_config(**base)).to(device)


def load_adm_prior(path, preset: str | None = None, device="cpu", autocast_bf16: bool = False,
                   channels_last: bool = False, name: str | None = None, **overrides) -> Prior:
    """A guided-diffusion checkpoint as a ``Prior`` (linear β schedule, T = 1000, 3 channels)."""
    net = load_adm_network(path, preset=preset, device=device, **overrides)
    for p in net.parameters():
        p.requires_grad_(False)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Prior(net, channels=net.config.in_channels, name=name or os.path.basename(os.fspath(path)),
                 autocast_bf16=autocast_bf16).to(device)


def save_safetensors(state_dict: dict, path, config: ADMConfig | None = None, extra_metadata: dict | None = None):
    """Write tensors (contiguous, float32 unless given otherwise) to ``path`` via a temp name."""
    from safetensors.torch import save_file
    path = os.fspath(path)
    meta = {"format": "pt"}
    if config is not None:
        meta["adm_config"] = json.dumps(config.to_dict())
    if extra_metadata:
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra_metadata.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def convert_checkpoint(src, dst, preset: str | None = None, check: bool = True, **overrides) -> dict:
    """.pt → .safetensors. With ``check``, the tensors must build an ADM (preset guessed if not given)."""
    if os.path.abspath(os.fspath(src)) == os.path.abspath(os.fspath(dst)):
        raise ValueError("output: must differ from the input checkpoint")
    sd, metadata = read_state_dict(src)
    config = None
    if check:
        net = load_adm_network(src, preset=preset, **overrides)
        config = net.config
    save_safetensors(sd, dst, config=config)
    return {"tensors": len(sd), "parameters": int(sum(v.numel() for v in sd.values())),
            "config": config.to_dict() if config else None}
