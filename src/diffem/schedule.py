"""Diffusion schedule: linear β (T = 1000), guided-diffusion respacing, DDPM and DDIM steps.

Indices: ``i`` runs over the respaced chain (0 … len-1); ``schedule.timesteps[i]`` is the
original index t ∈ 0 … T-1 that the network sees.
"""
from __future__ import annotations

import numpy as np
import torch


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def alphas_cumprod(betas) -> np.ndarray:
    """ᾱ_t = Π_{s ≤ t} (1 − β_s), float64: the one definition (``Schedule`` and ``Prior`` use it)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def space_timesteps(T: int, spacing: str | int) -> list[int]:
    """Original timesteps kept by guided-diffusion's ``space_timesteps``.

    ``"100"`` or ``100``: evenly spaced with rounding; ``"10,20,30"``: sections of T with
    that many steps each; ``"ddim50"``: a constant integer stride giving exactly 50 steps.
    """
    spacing = str(spacing).strip()
    try:
        counts = [int(c) for c in spacing.removeprefix("ddim").split(",")]
        if spacing.startswith("ddim") and len(counts) != 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"steps: expected a number of steps, 'N,M,...' sections or 'ddimN', got {spacing!r}") from None
    if spacing.startswith("ddim"):
        for stride in range(1, T):
            if len(range(0, T, stride)) == counts[0]:
                return list(range(0, T, stride))
        raise ValueError(f"steps: cannot take exactly {spacing[4:]} steps with an integer stride from T={T}")
    size, extra = divmod(T, len(counts))
    kept, start = [], 0
    for s, count in enumerate(counts):
        section = size + (1 if s < extra else 0)
        if not 1 <= count <= section:
            raise ValueError(f"steps: cannot take {count} steps from a section of {section}")
        stride = 1.0 if count == 1 else (section - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += section
    return sorted(set(kept))


class Schedule:
    """A (possibly respaced) variance-preserving DDPM chain.

    ``alphas_cumprod[i]`` is ᾱ at original timestep ``timesteps[i]``; the respaced betas are
    β'_i = 1 − ᾱ_i / ᾱ_{i−1} (guided-diffusion's ``SpacedDiffusion``). A sampler's schedule comes
    from its prior, ``Schedule.for_prior(prior, steps)``, so both use the β the network was trained with.
    """

    def __init__(self, steps: str | int = 100, T: int = 1000, betas: np.ndarray | None = None):
        base = linear_betas(T) if betas is None else np.asarray(betas, dtype=np.float64)
        self.T = len(base)
        abar_full = alphas_cumprod(base)
        self.timesteps = space_timesteps(self.T, steps)
        self.alphas_cumprod = abar_full[self.timesteps]
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.betas = 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev
        # DDPM posterior ("fixed small") variance σ̃²_i = β'_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.abar_full = abar_full

    @classmethod
    def for_prior(cls, prior, steps: str | int = 100) -> "Schedule":
        """The chain of ``prior`` (its base β, T), respaced to ``steps``."""
        return cls(steps, betas=prior.betas)

    def __len__(self) -> int:
        return len(self.timesteps)

    def t(self, i: int, batch: int = 1, device=None) -> torch.Tensor:
        """Original timestep of step i as a (batch,) int64 tensor, what the network takes."""
        return torch.full((batch,), self.timesteps[i], dtype=torch.long, device=device)

    # --- forward process -------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε for original timesteps t (B,)."""
        abar = torch.as_tensor(self.abar_full, device=x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    # --- reverse steps (Eq. 12 gives x̂0; these go from x_t to x_{t-1}) -----------------
    def ddpm_step(self, x_t: torch.Tensor, x0: torch.Tensor, i: int, noise: torch.Tensor | None) -> torch.Tensor:
        """Ancestral step with the posterior mean of q(x_{t−1} | x_t, x̂0) and fixed-small variance."""
        abar, abar_prev, beta = self.alphas_cumprod[i], self.alphas_cumprod_prev[i], self.betas[i]
        c0 = beta * np.sqrt(abar_prev) / (1.0 - abar)
        ct = (1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar)
        mean = c0 * x0 + ct * x_t
        if i == 0 or noise is None:
            return mean
        return mean + float(np.sqrt(self.posterior_variance[i])) * noise

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, i: int, noise: torch.Tensor | None,
                  eta: float = 0.0) -> torch.Tensor:
        """DDIM step (Song et al. 2021, Eq. 12) with stochasticity η (η = 1 matches DDPM's variance)."""
        abar, abar_prev = self.alphas_cumprod[i], self.alphas_cumprod_prev[i]
        eps = (x_t - np.sqrt(abar) * x0) / np.sqrt(1.0 - abar)
        s = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        out = np.sqrt(abar_prev) * x0 + np.sqrt(max(1 - abar_prev - s**2, 0.0)) * eps
        if i == 0 or noise is None or s == 0:
            return out
        return out + float(s) * noise
