"""A small kernel diffusion model for BlindDPS (the kernel half of its two parallel diffusions).

BlindDPS uses a 17 M-parameter guided-diffusion UNet on 64×64 kernels. Here: diffem's ADM UNet
(``diffem.priors.adm``) with a 1-channel, ~1 M-parameter config, trained briefly on CPU on
diffem's kernel generators (``training_mixture(33)``, the distribution the kernel denoisers use).

Size: kernels are 33×33; the UNet halves the resolution twice, so kernels are zero-padded to 36×36
(1 row/column before, 2 after) and cropped back to 33×33 after each x̂0 prediction.
Scale: a kernel k ≥ 0 is shown to the network as 2·k/max(k) − 1 ∈ [−1, 1] (padding = −1); an
x̂0 is turned back into a kernel by (x̂0 + 1)/2, clipped at 0 and normalised to sum 1 (BlindDPS).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffem.physics import center_crop_or_pad
from diffem.priors.base import Prior

KERNEL_SIZE = 33
PAD_SIZE = 36
_PAD = (1, PAD_SIZE - KERNEL_SIZE - 1)   # before, after
WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "blinddps_kernel_33.safetensors"

NET_CONFIG = dict(image_size=PAD_SIZE, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                  attention_resolutions="", middle_attention=False, num_head_channels=32,
                  learn_sigma=False, use_scale_shift_norm=True, resblock_updown=True, dropout=0.0)


def kernel_to_net(k: torch.Tensor) -> torch.Tensor:
    """(B, 33, 33) kernels → (B, 1, 36, 36) network inputs in [−1, 1]."""
    k = k / k.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    k = F.pad(k[:, None], (_PAD[0], _PAD[1], _PAD[0], _PAD[1]))
    return 2 * k - 1


def net_to_kernel(z: torch.Tensor, ksize: int = KERNEL_SIZE) -> torch.Tensor:
    """(B, 1, 36, 36) x̂0 in [−1, 1] → (B, ksize, ksize) kernels, ≥ 0 and summing to 1 (BlindDPS:
    (x̂0 + 1)/2 then divided by its sum; we also clip at 0 so the result is a valid kernel)."""
    k = crop_net(z)[:, 0]
    if ksize != KERNEL_SIZE:
        k = center_crop_or_pad(k, ksize)
    k = ((k + 1) / 2).clamp_min(0)
    return k / k.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def crop_net(z: torch.Tensor) -> torch.Tensor:
    return z[..., _PAD[0]: _PAD[0] + KERNEL_SIZE, _PAD[0]: _PAD[0] + KERNEL_SIZE]


def build_network():
    from diffem.priors.adm import ADMUNet
    return ADMUNet(**NET_CONFIG)


def load_kernel_prior(path=None, device="cpu") -> Prior:
    """The shipped kernel diffusion model (or a checkpoint written by ``train_kernel_prior``) as a
    1-channel ``Prior`` on 36×36 inputs."""
    from diffem.priors.adm import load_adm_network
    path = WEIGHTS if path is None else Path(path)
    if not Path(path).exists():
        raise ValueError(f"kernel_prior: weights file not found: {path}")
    net = load_adm_network(path, device=device, **NET_CONFIG)
    for p in net.parameters():
        p.requires_grad_(False)
    return Prior(net, channels=1, name="blinddps-kernel-33").to(device).eval()


def _dihedral(k: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips / 90° rotations: the kernel distribution is (close to) invariant to them."""
    r = int(torch.randint(0, 4, (1,), generator=g))
    k = torch.rot90(k, r, dims=(-2, -1))
    if int(torch.randint(0, 2, (1,), generator=g)):
        k = torch.flip(k, dims=(-1,))
    return k


def train_kernel_prior(out, *, n_kernels: int = 6000, batch: int = 32, lr: float = 3e-4, max_minutes: float = 25.0,
                       max_steps: int = 100000, max_wall_minutes: float | None = None, ema: float = 0.999, seed: int = 0, log_every: int = 50,
                       ckpt_every: int = 200, bank=None, init=None, progress: bool = True) -> dict:
    """ε-prediction training (T = 1000, linear β) on a bank of ``training_mixture(33)`` kernels.

    Stops after ``max_minutes`` of process CPU time per thread (the compute actually received),
    ``max_wall_minutes`` of wall time or ``max_steps``;
    writes EMA weights to ``out`` (safetensors, via a temp name) every ``ckpt_every`` steps and at the end.
    ``init``: a checkpoint to continue from (its EMA weights start both the model and the EMA; the
    step count in the metadata continues from the checkpoint's).
    """
    from tqdm.auto import tqdm

    from diffem.kernels.generators import training_mixture
    from diffem.priors.adm import save_safetensors
    from diffem.schedule import Schedule

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if bank is None:
        bank = training_mixture(KERNEL_SIZE, seed=seed).step(n_kernels)
    data = bank.float()
    net = build_network()
    step0 = 0
    if init is not None:
        from safetensors import safe_open
        from safetensors.torch import load_file
        net.load_state_dict(load_file(os.fspath(init)))
        with safe_open(os.fspath(init), "pt") as f:
            step0 = int((f.metadata() or {}).get("steps", 0))
    ema_net = build_network()
    ema_net.load_state_dict(net.state_dict())
    for p in ema_net.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = Schedule()   # linear β, T = 1000
    cfg = net.config
    t_start = time.process_time()
    losses = []
    step = 0

    def save():
        save_safetensors(ema_net.state_dict(), out, config=cfg,
                         extra_metadata={"diffem_kind": "blinddps-kernel-prior", "steps": step0 + step, "batch": batch,
                                         "n_kernels": len(data), "kernel_size": KERNEL_SIZE,
                                         "generator": "diffem.kernels.training_mixture(33)", "seed": seed})

    bar = tqdm(total=max_steps, desc="kernel prior", disable=not progress)
    wall_start = time.time()

    def time_left():
        if time.process_time() - t_start >= 60 * max_minutes * torch.get_num_threads():
            return False
        return max_wall_minutes is None or time.time() - wall_start < 60 * max_wall_minutes

    while step < max_steps and time_left():
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = kernel_to_net(_dihedral(data[idx], g))
        t = torch.randint(0, schedule.T, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = schedule.q_sample(x0, t, noise)
        loss = F.mse_loss(net(x_t, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(ema, (1 + step) / (10 + step))   # EMA warm-up: short runs would keep the init
        with torch.no_grad():
            for pe, p in zip(ema_net.parameters(), net.parameters()):
                pe.mul_(decay).add_(p, alpha=1 - decay)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
            print(json.dumps({"step": step, "loss": float(np.mean(losses[-log_every:])),
                              "cpu_s": round(time.process_time() - t_start, 1)}), flush=True)
        if step % ckpt_every == 0:
            save()
    bar.close()
    save()
    return {"steps": step, "final_loss": float(np.mean(losses[-log_every:])) if losses else None,
            "cpu_s": time.process_time() - t_start, "out": os.fspath(out)}


if __name__ == "__main__":   # python -m diffem.peers.kernel_diffusion OUT [cpu_minutes] [wall_minutes] [init]
    import sys
    torch.set_num_threads(1)
    out = sys.argv[1]
    cpu_min = float(sys.argv[2]) if len(sys.argv) > 2 else 25.0
    wall_min = float(sys.argv[3]) if len(sys.argv) > 3 else None
    init = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(train_kernel_prior(out, n_kernels=4000, batch=16, max_minutes=cpu_min, init=init,
                                        max_wall_minutes=wall_min, seed=0 if init is None else 1, ckpt_every=50,
                                        progress=False)), flush=True)
