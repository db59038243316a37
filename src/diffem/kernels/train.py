"""Training of the kernel denoiser (``diffem train-kernel-denoiser --size 33``).

Data: a pool of kernels from the training mixture (hand-shake model, motion trajectories, lines,
Gaussians; see ``generators.training_mixture``), augmented on the fly by the 8 flips/rotations and a
random sub-pixel offset (bilinear, up to ±``max_offset`` px: the M-step's Z is not always centred).
Noise: Gaussian with σ log-uniform in [sigma_min, sigma_max]; for half the batch the noisy kernel is
then clipped at 0 and renormalised, as the M-step does before the prior step (reference code's
``normalize_kernel``). Loss: MSE on the kernels. Optimiser: Adam with a cosine-decayed learning rate.

Deterministic for a seed: the pool comes from the seed, and batch ``i`` from a generator seeded with
(seed, i) — so a run resumed from a checkpoint gives exactly the weights of an uninterrupted run.
Checkpoints (model + Adam moments + iteration) are safetensors next to the output file.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

from diffem.kernels.denoiser import KernelDenoiser, save_kernel_denoiser
from diffem.kernels.generators import training_mixture
from diffem.files import atomic_write
from diffem.physics import project_simplex

# σ ranges chosen by measurement (docs/benchmarks/kernels.md): they bracket the M-step's
# σ_d = √(λ/β) (3.2e-3 for 33 with λ=1, 1.4e-3 for 64 with λ=0.2) by >5× on each side.
DEFAULT_SIGMA_RANGE = {33: (5e-4, 2e-2), 64: (2e-4, 1e-2)}


def sigma_range_for(size: int) -> tuple[float, float]:
    if size in DEFAULT_SIGMA_RANGE:
        return DEFAULT_SIGMA_RANGE[size]
    # keep σ·s² (the network's input scale) in the same range as for 33
    r = (33.0 / size) ** 2
    return (5e-4 * r, 2e-2 * r)


def make_pool(size: int, n: int, seed: int, progress: bool = True) -> torch.Tensor:
    """n training kernels (n, size, size), generated in chunks with a progress bar."""
    from tqdm.auto import tqdm

    gen = training_mixture(size, seed=seed)
    chunks = []
    with tqdm(total=n, desc=f"kernels {size}x{size}", disable=not progress, leave=False) as bar:
        done = 0
        while done < n:
            m = min(256, n - done)
            chunks.append(gen.step(m))
            done += m
            bar.update(m)
    return torch.cat(chunks)


def shift_bilinear(k: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate (B, s, s) kernels by (B, 2) sub-pixel offsets (rows, cols) with bilinear
    interpolation and zero borders. Mass leaving the support is lost (the caller renormalises)."""
    B, s, _ = k.shape
    # grid_sample reads the input at normalised coordinates: output pixel p samples p - offset
    base = torch.arange(s, dtype=k.dtype)
    rows = base[None, :] - offsets[:, 0:1]
    cols = base[None, :] - offsets[:, 1:2]
    gy = (2 * rows + 1) / s - 1
    gx = (2 * cols + 1) / s - 1
    grid = torch.stack([gx[:, None, :].expand(B, s, s), gy[:, :, None].expand(B, s, s)], dim=-1)
    return F.grid_sample(k[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def dihedral(k: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips / transposition per kernel (the 8 symmetries of the square)."""
    codes = torch.randint(0, 8, (k.shape[0],), generator=g)
    out = k.clone()
    t = (codes & 1).bool()
    out[t] = out[t].transpose(-1, -2)
    fr = (codes & 2).bool()
    out[fr] = out[fr].flip(-2)
    fc = (codes & 4).bool()
    out[fc] = out[fc].flip(-1)
    return out


def make_batch(pool: torch.Tensor, batch_size: int, sigma_range, g: torch.Generator, max_offset: float = 2.0,
               project_fraction: float = 0.5, crop: int | None = None):
    """(noisy (B,1,c,c), sigma (B,), clean (B,1,c,c)) from the pool, with the generator g.

    ``crop``: random c×c windows of the (noisy, clean) kernels instead of the whole s×s support.
    The network is fully convolutional (11×11 receptive field), so crops train it at a fraction of
    the cost; the loss then skips a border of the crop (see ``train_kernel_denoiser``)."""
    idx = torch.randint(0, len(pool), (batch_size,), generator=g)
    k = dihedral(pool[idx], g)
    if max_offset > 0:
        offsets = (torch.rand(batch_size, 2, generator=g) * 2 - 1) * max_offset
        k = project_simplex(shift_bilinear(k, offsets))
    lo, hi = sigma_range
    sigma = torch.exp(math.log(lo) + torch.rand(batch_size, generator=g) * (math.log(hi) - math.log(lo)))
    noisy = k + sigma[:, None, None] * torch.randn(k.shape, generator=g)
    proj = torch.rand(batch_size, generator=g) < project_fraction
    noisy[proj] = project_simplex(noisy[proj])
    s = k.shape[-1]
    if crop is not None and crop < s:
        r0 = torch.randint(0, s - crop + 1, (batch_size,), generator=g).tolist()
        c0 = torch.randint(0, s - crop + 1, (batch_size,), generator=g).tolist()
        noisy = torch.stack([noisy[b, r:r + crop, c:c + crop] for b, (r, c) in enumerate(zip(r0, c0))])
        k = torch.stack([k[b, r:r + crop, c:c + crop] for b, (r, c) in enumerate(zip(r0, c0))])
    return noisy[:, None], sigma, k[:, None]


# ----------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: str, model, opt, iteration: int, config: dict):
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            tensors[f"adam.{idx}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous().reshape(-1)
    meta = {"iteration": str(iteration), **{k: str(v) for k, v in config.items()}}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_checkpoint(path: str, model, opt, config: dict) -> int:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("size", "seed", "batch_size", "pool_size", "bias", "scale", "crop"):
        if key in meta and meta[key] != str(config[key]):
            raise ValueError(f"resume: checkpoint {path!r} was made with {key}={meta[key]}, not {config[key]}")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state = {}
    for k, v in tensors.items():
        if k.startswith("adam."):
            _, idx, name = k.split(".", 2)
            ref = dict(model.named_parameters())
            state.setdefault(int(idx), {})[name] = v if name != "step" else v.reshape(())
    for idx, st in state.items():
        p = list(model.parameters())[idx]
        for name in ("exp_avg", "exp_avg_sq"):
            st[name] = st[name].reshape(p.shape)
    sd["state"] = state
    opt.load_state_dict(sd)
    return int(meta["iteration"])


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, kernels: torch.Tensor, sigma: float, seed: int = 1234, project: bool = False):
    """(MSE of the noisy input, MSE of the denoised output) on kernels (n, s, s) at noise σ.
    ``project``: clip + renormalise the noisy input first (what the M-step feeds the prior)."""
    g = torch.Generator().manual_seed(seed)
    noisy = kernels + sigma * torch.randn(kernels.shape, generator=g)
    if project:
        noisy = project_simplex(noisy)
    out = model(noisy[:, None], sigma)[:, 0]
    return F.mse_loss(noisy, kernels).item(), F.mse_loss(out, kernels).item()


# ----------------------------------------------------------------------------- training


def train_kernel_denoiser(size: int = 33, out=None, iterations: int = 4000, batch_size: int = 32, lr: float = 1e-3,
                          crop: int | None = 24,
                          pool_size: int = 6000, sigma_range=None, seed: int = 0, bias: bool = True,
                          scale: bool = True, resume: bool = True, checkpoint_every: int = 250,
                          threads: int | None = None, progress: bool = True, log=print,
                          stop_after: int | None = None) -> KernelDenoiser:
    """Train a kernel denoiser and write it to ``out`` (safetensors). Returns the model.

    ``stop_after``: leave after that many iterations of this call, with a checkpoint but no weights
    file (a time-boxed session); run again with the same arguments to continue."""
    from tqdm.auto import tqdm

    if int(size) < 3:
        raise ValueError(f"size must be >= 3, got {size!r}")
    if iterations < 1 or batch_size < 1 or pool_size < 1:
        raise ValueError("iterations, batch_size and pool_size must be positive")
    size = int(size)
    sigma_range = tuple(sigma_range or sigma_range_for(size))
    if not (0 < sigma_range[0] <= sigma_range[1]) or not all(map(math.isfinite, sigma_range)):
        raise ValueError(f"sigma_range must be 0 < min <= max, finite; got {sigma_range}")
    if threads:
        torch.set_num_threads(int(threads))
    out = os.fspath(out or f"kernel_denoiser_{size}.safetensors")
    ckpt = out + ".ckpt"
    config = {"size": size, "seed": seed, "batch_size": batch_size, "pool_size": pool_size,
              "bias": int(bias), "scale": int(scale), "crop": crop}
    margin = 3

    torch.manual_seed(seed)  # network initialisation only
    model = KernelDenoiser(size, bias=bias, scale=scale)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = 0
    if resume and os.path.exists(ckpt):
        start = _load_checkpoint(ckpt, model, opt, config)
        log(f"resuming from {ckpt} at iteration {start}")
    t0 = time.time()
    pool = make_pool(size, pool_size, seed=seed, progress=progress)
    held_out = make_pool(size, 256, seed=seed + 10_000, progress=False)
    log(f"pool of {pool_size} kernels in {time.time() - t0:.1f} s")

    model.train()
    running = None
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=f"train {size}x{size}",
               disable=not progress)
    for it in bar:
        for group in opt.param_groups:  # cosine decay to lr/100
            group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / iterations)))
        g = torch.Generator().manual_seed(seed * 1_000_003 + it)
        noisy, sigma, clean = make_batch(pool, batch_size, sigma_range, g, crop=crop)
        f = model.factor
        pred = model.apply_net(noisy, sigma)
        m = margin if crop is not None and crop < size else 0  # crop edges see zero padding, not the kernel
        sl = (Ellipsis, slice(m, pred.shape[-2] - m), slice(m, pred.shape[-1] - m))
        loss = F.mse_loss(pred[sl] * f, clean[sl] * f)  # MSE on the O(1) scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4g}")
        last = stop_after is not None and it + 1 - start >= stop_after
        if (it + 1) % checkpoint_every == 0 or it + 1 == iterations or last:
            _save_checkpoint(ckpt, model, opt, it + 1, config)
        if last and it + 1 < iterations:
            bar.close()
            log(f"stopped at iteration {it + 1}/{iterations}; checkpoint {ckpt}")
            return model.eval()
    model.eval()
    sd = math.sqrt(sigma_range[0] * sigma_range[1])
    noisy_mse, den_mse = evaluate(model, held_out, sd)
    log(f"held-out at sigma={sd:.2e}: noisy MSE {noisy_mse:.3e} -> denoised {den_mse:.3e} "
        f"({noisy_mse / den_mse:.1f}x)")
    save_kernel_denoiser(model, out, sigma_min=sigma_range[0], sigma_max=sigma_range[1], iterations=iterations,
                         batch_size=batch_size, pool_size=pool_size, seed=seed, lr=lr, crop=crop,
                         training="diffem.kernels.train: training_mixture, MSE, Adam")
    log(f"wrote {out}")
    return model


def export_checkpoint(ckpt, out, sigma_range=None, lr: float = 1e-3, log=print) -> KernelDenoiser:
    """Write the weights of a training checkpoint (e.g. a run stopped early) as a denoiser file,
    with the iteration it reached in the metadata."""
    from safetensors import safe_open

    ckpt = os.fspath(ckpt)
    with safe_open(ckpt, framework="pt") as f:
        meta = f.metadata() or {}
        state = {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
    size = int(meta["size"])
    model = KernelDenoiser(size, bias=meta.get("bias", "1") == "1", scale=meta.get("scale", "1") == "1")
    model.load_state_dict(state)
    model.eval()
    sigma_range = tuple(sigma_range or sigma_range_for(size))
    save_kernel_denoiser(model, out, sigma_min=sigma_range[0], sigma_max=sigma_range[1],
                         iterations=int(meta["iteration"]), batch_size=int(meta["batch_size"]),
                         pool_size=int(meta["pool_size"]), seed=int(meta["seed"]), lr=lr,
                         crop=None if meta.get("crop") in (None, "None") else int(meta["crop"]),
                         training="diffem.kernels.train: training_mixture, MSE, Adam (exported checkpoint)")
    log(f"wrote {out} from {ckpt} (iteration {meta['iteration']})")
    return model
