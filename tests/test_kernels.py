"""Kernel generators, loaders and the `diffem kernels` command."""
from pathlib import Path

import numpy as np
import pytest
import torch

from diffem.cli import main as cli_main
from diffem.kernels import (
    GaussianBlurGenerator,
    HandShakeGenerator,
    LinearMotionGenerator,
    MixtureGenerator,
    MotionBlurGenerator,
    gaussian_kernel,
    generate_kernels,
    linear_motion_kernel,
    load_kernel_set,
    motion_blur_kernel,
    place_kernel,
    training_mixture,
)
from diffem.kernels.loaders import BUNDLED
from diffem.physics import center_of_mass

LEVIN = BUNDLED / "Levin09"
NAMES = ["motion", "handshake", "gaussian", "linear", "mix"]


def _second_moments(k):
    s = k.shape[-1]
    r, c = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64), indexing="ij")
    k = k.double()
    mr, mc = (k * r).sum(), (k * c).sum()
    return (k * (r - mr) ** 2).sum().item(), (k * (c - mc) ** 2).sum().item()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [33, 64])
def test_generated_kernels_are_valid_and_centred(name, size):
    k = generate_kernels(name, size, 6, seed=3)
    assert k.shape == (6, size, size) and k.dtype == torch.float32
    assert k.min() >= 0
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(6), atol=1e-5, rtol=0)
    com = center_of_mass(k.double())
    assert (com - size // 2).abs().max() < 0.5
    assert (k > 0).sum((1, 2)).min() >= 2  # not a Dirac


@pytest.mark.parametrize("name", NAMES)
def test_generators_are_deterministic(name):
    a = generate_kernels(name, 33, 3, seed=11)
    b = generate_kernels(name, 33, 3, seed=11)
    c = generate_kernels(name, 33, 3, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # step(seed=) is reproducible on its own; the internal RNG advances between calls
    g = MotionBlurGenerator(33, seed=5)
    assert torch.equal(g.step(2, seed=1), g.step(2, seed=1))
    first, second = g.step(2), g.step(2)
    assert not torch.equal(first, second)


def test_motion_intensity_zero_is_a_straight_line():
    # intensity 0: every angle is drawn in [-0, 0] or a tiny triangular(0, 0, 0.1) -> nearly straight path
    k = MotionBlurGenerator(33, intensity=0.0).step(4, seed=0).double()
    for kk in k:
        vr, vc = _second_moments(kk)
        r, c = torch.meshgrid(torch.arange(33.0, dtype=torch.float64), torch.arange(33.0, dtype=torch.float64),
                              indexing="ij")
        cov = ((kk * (r - 16) * (c - 16)).sum()).item()
        ev = np.linalg.eigvalsh(np.array([[vr, cov], [cov, vc]]))
        assert ev[0] < 0.2 * ev[1] + 1.0  # elongated: one direction dominates


def test_linear_motion_geometry():
    k = linear_motion_kernel(33, length=20, angle=0.0, blur=0.0).double()
    vr, vc = _second_moments(k)
    # uniform segment of length L: variance L²/12 along it (+ bilinear splat spread ≤ 1/4), ~0 across
    assert abs(vc - 20 ** 2 / 12) < 1.5
    assert vr < 0.1
    k90 = linear_motion_kernel(33, length=20, angle=90.0, blur=0.0).double()
    vr90, vc90 = _second_moments(k90)
    assert abs(vr90 - 20 ** 2 / 12) < 1.5 and vc90 < 0.1


def test_gaussian_kernel_moments():
    k = gaussian_kernel(33, sigma=2.0, sigma2=3.0, angle=0.0)
    vr, vc = _second_moments(k)
    assert abs(vc - 4.0) < 0.05 and abs(vr - 9.0) < 0.05
    k = gaussian_kernel(33, sigma=2.0, sigma2=3.0, angle=90.0)
    vr, vc = _second_moments(k)
    assert abs(vc - 9.0) < 0.05 and abs(vr - 4.0) < 0.05
    iso = GaussianBlurGenerator(33, sigma_min=1.5, sigma_max=1.5, isotropic=True).step(1, seed=0)[0]
    vr, vc = _second_moments(iso)
    assert abs(vr - 2.25) < 0.05 and abs(vc - 2.25) < 0.05


def test_handshake_tremor_band_and_drift():
    # tremor only: the angle spectrum peaks at the tremor frequency
    g = HandShakeGenerator(33, exposure=2.0, tremor_amp=1e-3, tremor_freq=10.0, tremor_bandwidth=0.5,
                           drift_speed=0.0)
    th = g.angles(np.random.default_rng(0), 2.0)
    spec = np.abs(np.fft.rfft(th[:, 0] - th[:, 0].mean())) ** 2
    freqs = np.fft.rfftfreq(len(th), 1 / g.sample_rate)
    assert 9.0 <= freqs[spec.argmax()] <= 11.0
    assert th.std(0).max() == pytest.approx(1e-3, rel=0.6)  # RMS amplitude × axis ratio in [0.5, 1]
    # drift only: smooth (most power below 5 Hz)
    g = HandShakeGenerator(33, exposure=2.0, tremor_amp=0.0, drift_speed=0.02, drift_tau=0.3)
    th = g.angles(np.random.default_rng(0), 2.0)
    spec = np.abs(np.fft.rfft(th[:, 0] - th[:, 0].mean())) ** 2
    freqs = np.fft.rfftfreq(len(th), 1 / g.sample_rate)
    assert spec[freqs < 5].sum() > 0.95 * spec.sum()


def test_handshake_fit_keeps_kernel_inside():
    k = HandShakeGenerator(33, focal_px=1e5, drift_speed=0.05).step(4, seed=0)  # huge motion, scaled to fit
    assert k[:, 0, :].sum() == 0 and k[:, -1, :].sum() == 0 and k[:, :, 0].sum() == 0 and k[:, :, -1].sum() == 0


def test_mixture_and_function_forms():
    mix = training_mixture(33, seed=0)
    assert isinstance(mix, MixtureGenerator) and mix.step(3).shape == (3, 33, 33)
    only_lines = MixtureGenerator([LinearMotionGenerator(33), GaussianBlurGenerator(33)], weights=[1, 0], seed=0)
    # a line covers a few dozen pixels, a Gaussian all 33² of them
    assert (only_lines.step(8, seed=4) > 0).sum((1, 2)).max() < 300
    assert motion_blur_kernel(21, 0.5, seed=1).shape == (21, 21)


@pytest.mark.parametrize("make", [
    lambda: MotionBlurGenerator(2),
    lambda: MotionBlurGenerator(33.5),
    lambda: MotionBlurGenerator(33, intensity=1.5),
    lambda: MotionBlurGenerator(33, intensity=float("nan")),
    lambda: HandShakeGenerator(33, exposure=0),
    lambda: HandShakeGenerator(33, focal_px=float("inf")),
    lambda: HandShakeGenerator(33, tremor_amp=(1e-3, 1e-4)),
    lambda: GaussianBlurGenerator(33, sigma_min=-1),
    lambda: LinearMotionGenerator(33, length=40),
    lambda: MixtureGenerator([MotionBlurGenerator(33), MotionBlurGenerator(21)]),
    lambda: MotionBlurGenerator(33).step(0),
    lambda: generate_kernels("unknown", 33),
])
def test_bad_input_raises_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_error_names_the_argument():
    with pytest.raises(ValueError, match="intensity"):
        MotionBlurGenerator(33, intensity=-0.1)
    with pytest.raises(ValueError, match="size"):
        HandShakeGenerator(1)


def test_levin_loader_uses_kernels_as_they_are():
    ks = load_kernel_set("Levin09", 33, root=LEVIN)
    assert ks.shape == (8, 33, 33)
    torch.testing.assert_close(ks.sum((1, 2)), torch.ones(8), atol=1e-5, rtol=0)
    assert (center_of_mass(ks.double()) - 16).abs().max() < 0.05
    # no flip: the placed kernel is the file's kernel up to a translation (compare second moments
    # and the cross moment, whose sign a flip along one axis would change)
    raw = torch.from_numpy(np.load(sorted(LEVIN.glob("*.npy"))[0]).astype(np.float64))
    raw = raw / raw.sum()
    placed = ks[0].double()

    def cross(k):
        r, c = torch.meshgrid(torch.arange(k.shape[0], dtype=torch.float64),
                              torch.arange(k.shape[1], dtype=torch.float64), indexing="ij")
        mr, mc = (k * r).sum(), (k * c).sum()
        return (k * (r - mr) * (c - mc)).sum().item()

    assert cross(placed) == pytest.approx(cross(raw), rel=0.05, abs=0.05)
    # the sub-pixel bilinear shift adds at most 1/4 px² of variance per axis
    for a, b in zip(_second_moments(placed), _second_moments(raw)):
        assert b - 1e-6 <= a <= b + 0.25 + 1e-6


def test_loader_errors():
    with pytest.raises(ValueError, match="name"):
        load_kernel_set("nope", 33, root=LEVIN)
    with pytest.raises(ValueError, match="size"):
        load_kernel_set("Levin09", 21, root=LEVIN)  # a 27x27 kernel does not fit
    fits = sum(max(np.ptp(np.nonzero(np.load(f).sum(1))[0]), np.ptp(np.nonzero(np.load(f).sum(0))[0])) + 1 <= 21
               for f in LEVIN.glob("*.npy"))
    assert 0 < fits < 8 and len(load_kernel_set("Levin09", 21, root=LEVIN, too_large="skip")) == fits
    with pytest.raises(ValueError, match="size"):
        place_kernel(np.ones((5, 5)), 3)


def test_shipped_kernel_sets_load_from_any_folder_without_a_data_folder(tmp_path, monkeypatch):
    """Bug 2/6: the sets the library advertises ship with it and every alias works, in any case."""
    monkeypatch.delenv("DIFFEM_KERNELS", raising=False)
    monkeypatch.chdir(tmp_path)
    for name, n, size in (("levin09", 8, 33), ("Levin", 8, 27), ("usrnet", 12, 25), ("LAI-uniform", 4, 75)):
        ks = load_kernel_set(name, size)
        assert ks.shape == (n, size, size), name
        torch.testing.assert_close(ks.sum((1, 2)), torch.ones(n), atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="USRNet_large"):   # not shipped: needs a folder
        load_kernel_set("usrnet_large", 75)


def test_no_data_path_of_a_development_machine_in_the_package():
    """Bug 6: no absolute data path and no parents[N] source-tree lookup (both break in an installed wheel)."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "diffem"
    offenders = [f"{p.relative_to(src)}:{i}: {line.strip()}" for p in sorted(src.rglob("*.py"))
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"""parents\[\d+\]|["'](/work|/home|/Users|/data)/""", line)]
    assert not offenders, offenders


def test_cli_kernels_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert cli_main(["kernels", "--generator", "handshake", "--size", "33", "-n", "4", "--seed", "0",
                     "-o", str(out), "--save-npy", str(tmp_path / "k.npy")]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    k = np.load(tmp_path / "k.npy")
    assert np.array_equal(k, generate_kernels("handshake", 33, 4, seed=0).numpy())
    assert cli_main(["kernels", "--size", "2", "-o", str(out)]) == 2
    assert cli_main(["kernels", "--generator", "motion", "--intensity", "2", "-o", str(out)]) == 2
