"""Random streams that depend only on what names them.

* ``derive_seed(*parts)``: a 31-bit seed from a tuple of integers (numpy ``SeedSequence``: different
  tuples give independent streams), e.g. (bench seed, image index, σ).
* ``ParticleNoise(seed, n)``: one ``torch.Generator`` per particle, as NVlabs/edm's
  ``StackedRandomGenerator``: particle i's noise depends on (seed, i) only, so adding particles does
  not change the first ones. Particle 0 is seeded with ``seed`` itself, which makes n = 1 draw exactly
  what a single ``torch.Generator().manual_seed(seed)`` draws (the results of earlier versions).
"""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class ParticleNoise:
    def __init__(self, seed: int, n: int):
        self.generators = [torch.Generator().manual_seed(int(seed) if i == 0 else derive_seed(seed, i))
                           for i in range(n)]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, like: torch.Tensor) -> torch.Tensor:
        """(n, *shape) standard normal noise, one particle per generator, on ``like``'s device and dtype.
        Drawn on the CPU so that a seed gives the same noise on every device."""
        noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators])
        return noise.to(device=like.device, dtype=like.dtype)
