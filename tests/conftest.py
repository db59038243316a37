import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

# Reproducible timings and results on the 2-core CI machine.
torch.set_num_threads(int(os.environ.get("DIFFEM_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def crop128() -> torch.Tensor:
    """A 128×128 centre crop of a CBSD68 image, (1,3,128,128) on [0,1]."""
    from PIL import Image

    a = np.asarray(Image.open(DATA / "core_cbsd68_crop128.png").convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def levin_kernel(index: int = 4, size: int = 33) -> torch.Tensor:
    """A Levin et al. 2009 camera-shake kernel, zero-padded and centred in a size×size support."""
    from diffem.kernels.loaders import BUNDLED
    from diffem.physics import recenter

    k = torch.from_numpy(np.load(BUNDLED / "Levin09" / f"levin09_k{index}.npy")).float()
    out = torch.zeros(size, size)
    o = (size - k.shape[0]) // 2
    out[o : o + k.shape[0], o : o + k.shape[1]] = k
    return recenter(out)


@pytest.fixture(scope="session")
def gaussian_prior():
    from diffem.priors.gaussian import GaussianPrior

    return GaussianPrior()
