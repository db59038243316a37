"""Training the small default prior: ε-prediction DDPM (Ho et al. 2020) on random crops.

Data: random crops (default 64×64, random horizontal/vertical flips) of a folder of photos,
all preloaded into memory once. The batch drawn at step s depends only on (seed, s), so a
resumed run sees exactly the data an uninterrupted run would have seen.

Loss: ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖², t ~ U{0..T−1}, linear β schedule, T = 1000 (the
schedule diffem samples with). Adam, EMA of the weights (exported), bf16 autocast +
channels_last on CPU (or CUDA).

Run folder (``--out``): ``model.safetensors`` (weights), ``ema.safetensors``,
``optim.pt`` (tensors and numbers only; read back with ``torch.load(weights_only=True)``),
``state.json`` (step, config, elapsed time), ``loss.csv``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

from diffem.files import atomic_write, write_text
from diffem.measurement import resolve_device
from diffem.priors.adm import ADMConfig, ADMUNet, make_config, read_state_dict, save_safetensors
from diffem.schedule import Schedule

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# The default prior's architecture: an ADM UNet with 32 base channels, 4 levels (1,2,2,2),
# one ResBlock per level and no attention, so it applies to any size that is a multiple of 8
# at a cost linear in the number of pixels. 1.85 M parameters. (A 2.6× cheaper variant on 2×2
# pixel-unshuffled images, `pixel_unshuffle=2`, denoises as well in one step but made a much worse
# ΠGDM prior: its guided samples carry a grid-like noise texture; docs/benchmarks/priors.md.)
DEFAULT_PRIOR_CONFIG = dict(
    image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2,2,2", learn_sigma=False,
    attention_resolutions="", middle_attention=False, num_heads=1, num_head_channels=-1,
    use_scale_shift_norm=True, resblock_updown=True, dropout=0.0, in_channels=3,
)


@dataclasses.dataclass
class TrainConfig:
    data: str = "../shared/data/train/CBSD432"
    out: str = "runs/prior"
    crop: int = 64
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 200
    ema: float = 0.999
    grad_clip: float = 1.0
    steps: int = 100_000
    max_minutes: float | None = None
    save_minutes: float = 5.0
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None  # None: on where bf16 is fast (AMX/AVX512-BF16 CPU, CUDA); emulated bf16 is ~50x slower
    channels_last: bool | None = None  # None: together with bf16 (alone it does not pay off)
    threads: int | None = None
    log_every: int = 10
    decay_start: int | None = None  # from this step on, cosine decay of the learning rate to 0 at ``steps``

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then (with ``decay_start``) a cosine decay to 0 at ``steps``."""
        lr = self.lr * min(1.0, (step + 1) / max(1, self.warmup))
        if self.decay_start is not None and step >= self.decay_start:
            frac = min(1.0, (step - self.decay_start) / max(1, self.steps - self.decay_start))
            lr *= 0.5 * (1 + math.cos(math.pi * frac))
        return lr


def load_images(folder: str) -> list[torch.Tensor]:
    """Every image of ``folder`` as a uint8 (3, H, W) tensor (sorted by name)."""
    from PIL import Image
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data: no such folder {folder!r}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
    if not names:
        raise ValueError(f"data: no images in {folder!r}")
    images = []
    for n in names:
        with Image.open(os.path.join(folder, n)) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
        images.append(torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous())
    return images


def sample_batch(images: list[torch.Tensor], batch: int, crop: int, seed: int, step: int) -> torch.Tensor:
    """(batch, 3, crop, crop) in [-1, 1]: random image, random crop, random flips; a function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    out = torch.empty(batch, 3, crop, crop)
    for b in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=g))]
        _, h, w = img.shape
        if h < crop or w < crop:
            raise ValueError(f"crop: {crop} is larger than an image of size {h}x{w}")
        top = int(torch.randint(h - crop + 1, (1,), generator=g))
        left = int(torch.randint(w - crop + 1, (1,), generator=g))
        patch = img[:, top:top + crop, left:left + crop]
        flips = torch.randint(2, (2,), generator=g)
        if flips[0]:
            patch = patch.flip(-1)
        if flips[1]:
            patch = patch.flip(-2)
        out[b] = patch.float()
    return out / 127.5 - 1


def diffusion_loss(net: nn.Module, x0: torch.Tensor, schedule: Schedule, g: torch.Generator, bf16: bool):
    """ε-prediction MSE (Ho et al. 2020, L_simple)."""
    n = x0.shape[0]
    t = torch.randint(schedule.T, (n,), generator=g).to(x0.device)
    eps = torch.randn(x0.shape, generator=g).to(x0.device)
    x_t = schedule.q_sample(x0, t, eps)
    ctx = torch.autocast(x0.device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(x0.device.type, enabled=False)
    with ctx:
        pred = net(x_t, t)
    return (pred.float() - eps).pow(2).mean()


def _save_run(out, net, ema, opt, state, config: ADMConfig):
    save_safetensors(net.state_dict(), os.path.join(out, "model.safetensors"), config=config)
    save_safetensors(ema.state_dict(), os.path.join(out, "ema.safetensors"), config=config)
    atomic_write(os.path.join(out, "optim.pt"), lambda tmp: torch.save(opt.state_dict(), tmp))
    write_text(os.path.join(out, "state.json"), json.dumps(state, indent=1))


def export_ema(out: str, path: str, extra: dict | None = None) -> dict:
    """Write the run's EMA weights (+ config and training facts in the metadata) to ``path``."""
    state_path = os.path.join(out, "state.json")
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"out: no training run in {out!r} (state.json missing)")
    with open(state_path) as f:
        state = json.load(f)
    sd, _ = read_state_dict(os.path.join(out, "ema.safetensors"))
    config = make_config(**state["adm_config"])
    info = {"step": state["step"], "train_seconds": round(state["elapsed"], 1), "images_seen": state["step"] * state["train"]["batch"],
            "train": state["train"], "resumed": state.get("resumed", []), "last_loss_ema": state.get("loss_ema")}
    if extra:
        info.update(extra)
    if os.path.abspath(path) in {os.path.abspath(os.path.join(out, n)) for n in ("ema.safetensors", "model.safetensors")}:
        raise ValueError("export: would overwrite the run's own weights")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(sd, path, config=config, extra_metadata={"diffem_prior": json.dumps(info)})
    return info


def train(cfg: TrainConfig, adm_overrides: dict | None = None, progress: bool = True) -> dict:
    from diffem.perf import configure_cpu
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    if device.type == "cpu":
        configure_cpu(threads=cfg.threads)
    if cfg.bf16 is None:
        from diffem.perf import bf16_supported
        cfg = dataclasses.replace(cfg, bf16=bf16_supported())
    if cfg.channels_last is None:
        cfg = dataclasses.replace(cfg, channels_last=cfg.bf16)
    os.makedirs(cfg.out, exist_ok=True)
    state_path = os.path.join(cfg.out, "state.json")
    resume = os.path.exists(state_path)
    if resume:
        with open(state_path) as f:
            state = json.load(f)
        adm_cfg = make_config(**state["adm_config"])
        if adm_overrides:
            raise ValueError("out: a run exists there; architecture flags cannot change on resume")
        # the settings of every resumed session (lr schedule, threads...) are kept for the model card
        state.setdefault("resumed", []).append({"at_step": state["step"], **dataclasses.asdict(cfg)})
    else:
        adm_cfg = make_config(**{**DEFAULT_PRIOR_CONFIG, "image_size": cfg.crop, **(adm_overrides or {})})
        state = {"step": 0, "elapsed": 0.0, "adm_config": adm_cfg.to_dict(), "loss_ema": None,
                 "train": dataclasses.asdict(cfg)}
    if cfg.crop % adm_cfg.multiple:
        raise ValueError(f"crop: must be a multiple of {adm_cfg.multiple} for this architecture")

    torch.manual_seed(cfg.seed)
    net = ADMUNet(adm_cfg)
    ema = ADMUNet(adm_cfg)
    if resume:
        net.load_state_dict(read_state_dict(os.path.join(cfg.out, "model.safetensors"))[0])
        ema.load_state_dict(read_state_dict(os.path.join(cfg.out, "ema.safetensors"))[0])
    else:
        ema.load_state_dict(net.state_dict())
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format).train()
    ema = ema.to(device).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if resume:
        opt.load_state_dict(torch.load(os.path.join(cfg.out, "optim.pt"), map_location=device, weights_only=True))

    images = load_images(cfg.data)
    schedule = Schedule()   # the linear β chain, T = 1000, that the default prior assumes
    loss_path = os.path.join(cfg.out, "loss.csv")
    new_log = not os.path.exists(loss_path)
    if not new_log:  # drop rows logged after the checkpoint we resume from (a kill loses them)
        with open(loss_path, newline="") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= state["step"]]
        if len(keep) != len(rows):
            buf = io.StringIO(newline="")
            csv.writer(buf).writerows(keep)
            write_text(loss_path, buf.getvalue())
    log = open(loss_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "loss_ema", "lr", "elapsed_s"])

    start_step, t0 = state["step"], time.time()
    elapsed0 = state["elapsed"]
    last_save = time.time()
    deadline = None if cfg.max_minutes is None else t0 + 60 * cfg.max_minutes
    loss_ema = state.get("loss_ema")
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not progress, desc="train-prior", mininterval=5)
    step = start_step
    stop_reason = "steps"
    try:
        while step < cfg.steps:
            if deadline is not None and time.time() >= deadline:
                stop_reason = "max-minutes"
                break
            x0 = sample_batch(images, cfg.batch, cfg.crop, cfg.seed, step).to(device, memory_format=memory_format)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 500_000_000)
            lr = cfg.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = diffusion_loss(net, x0, schedule, g, cfg.bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            # EMA with a warm-up so early exports are not dominated by the random init
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(pn.detach(), 1 - decay)
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise RuntimeError(f"training diverged at step {step} (loss {lv})")
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            bar.update(1)
            if step % cfg.log_every == 0:
                elapsed = elapsed0 + time.time() - t0
                writer.writerow([step, f"{lv:.5f}", f"{loss_ema:.5f}", f"{lr:.2e}", f"{elapsed:.1f}"])
                log.flush()
                bar.set_postfix(loss=f"{loss_ema:.4f}")
            if time.time() - last_save >= 60 * cfg.save_minutes:
                state.update(step=step, elapsed=elapsed0 + time.time() - t0, loss_ema=loss_ema)
                _save_run(cfg.out, net, ema, opt, state, adm_cfg)
                last_save = time.time()
    finally:
        bar.close()
        log.close()
        if step > start_step:
            state.update(step=step, elapsed=elapsed0 + time.time() - t0, loss_ema=loss_ema)
            _save_run(cfg.out, net, ema, opt, state, adm_cfg)
    return {"step": step, "elapsed": state["elapsed"], "loss_ema": loss_ema, "stopped": stop_reason}
