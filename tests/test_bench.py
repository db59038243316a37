"""Tests of the benchmark harness: spec grammar, resume after a kill, sharding, end-to-end run."""
import json
import os

import numpy as np
import pytest
import torch

from diffem.benchmark import (BenchConfig, load_rows, merge, parse_methods, register_method, run_benchmark,
                              shard_from_env, shard_jobs, unregister_method)
from diffem.benchmark.data import KernelSource, make_measurement
from diffem.benchmark.specs import parse_shard, parse_sigmas
from diffem.physics import blur, delta_kernel

IMAGES = os.path.join(os.path.dirname(__file__), "data", "bench_images")
VOLATILE = {"time_s", "cpu_s", "peak_rss_mb", "peak_cuda_mb", "finished", "timings"}


def _stable(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True) for r in rows))


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids oversubscription on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Dummy:
    """A fast deterministic 'method': returns the clipped measurement and a Dirac kernel;
    raises KeyboardInterrupt (as Ctrl-C / a kill would stop the run) on call number ``stop_at``."""

    def __init__(self):
        self.calls, self.stop_at = 0, None

    def __call__(self, y, sigma, kernel_size, true_kernel, seed, **opts):
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        return y.clamp(0, 1), delta_kernel(kernel_size), {"calls_seen": int(seed % 7)}


@pytest.fixture
def dummy():
    d = _Dummy()
    register_method("test-dummy", d)
    register_method("test-dummy2", _Dummy())
    yield d
    unregister_method("test-dummy")
    unregister_method("test-dummy2")


def _cfg(out, **kw):
    base = dict(dataset=IMAGES, out=str(out), methods="test-dummy,test-dummy2:a=1", sigmas="5,20",
                kernels="motion:9", crop=48, prior=None, progress=False, no_reference=False,
                summary=False)
    base.update(kw)
    return BenchConfig(**base)


def test_method_spec_grammar():
    specs = parse_methods("fast-em-pigdm:n=4,steps=50,dps-nonblind,em-pigdm:n=1,lam=0.5,kernel_prior=l2")
    assert [s.name for s in specs] == ["fast-em-pigdm", "dps-nonblind", "em-pigdm"]
    assert specs[0].options == {"n": 4, "steps": 50}
    assert specs[2].options == {"n": 1, "lam": 0.5, "kernel_prior": "l2"}
    assert specs[0].label == "fast-em-pigdm:n=4,steps=50" and specs[1].label == "dps-nonblind"
    for bad in ("n=4,fast-em-pigdm", "", "a:b", "x,x"):
        with pytest.raises(ValueError):
            parse_methods(bad)
    assert parse_sigmas("5,10,20") == [5.0, 10.0, 20.0]
    with pytest.raises(ValueError):
        parse_sigmas("0,5")
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError):
        parse_shard("3/3")


def test_interrupted_run_resumes_to_the_same_rows(tmp_path, dummy):
    full = run_benchmark(_cfg(tmp_path / "full"))
    assert len(full["rows"]) == 3 * 2 * 2 and not full["errors"]

    dummy.calls, dummy.stop_at = 0, 3  # the 3rd call of test-dummy dies: 4 rows are already saved
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(_cfg(tmp_path / "resumed"))
    path = tmp_path / "resumed" / "results.jsonl"
    saved = load_rows([str(tmp_path / "resumed")])
    assert len(saved) == 4
    with open(path, "a") as f:  # a kill in the middle of a write leaves a partial line
        f.write('{"image": "cbsd68_1')
    dummy.stop_at = None
    calls_before = dummy.calls
    res = run_benchmark(_cfg(tmp_path / "resumed"))
    assert res["skipped"] == 4 and len(res["rows"]) == 8
    assert dummy.calls - calls_before == 4  # finished rows were not recomputed (4 of the 8 are test-dummy2)
    assert _stable(load_rows([str(tmp_path / "resumed")])) == _stable(load_rows([str(tmp_path / "full")]))
    # every line of the file is valid JSON again
    with open(path) as f:
        assert all(json.loads(line) for line in f)
    # a resume with different settings is refused
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(_cfg(tmp_path / "resumed", seed=1))


def test_shards_cover_every_item_once_and_merge(tmp_path, dummy):
    jobs = list(range(17))
    parts = [shard_jobs(jobs, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == jobs
    full = run_benchmark(_cfg(tmp_path / "full"))
    keys = []
    for i in range(3):  # the shards write side by side in one folder, as on a shared file system
        r = run_benchmark(_cfg(tmp_path / "sharded", shard=f"{i}/3", summary=True))
        assert r["summary"] is None
        keys += [(row["image"], row["sigma255"], row["method"]) for row in r["rows"]]
    assert len(keys) == len(set(keys)) == len(full["rows"])
    merged = merge([str(tmp_path / "sharded")], str(tmp_path / "merged"))
    assert _stable(merged["rows"]) == _stable(full["rows"])
    assert os.path.exists(tmp_path / "merged" / "summary.md") and os.path.exists(tmp_path / "merged" / "pareto.png")


def test_shard_from_env():
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "5",
                           "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_degradation_is_deterministic_and_valid_boundary_matches_circular_interior():
    src = KernelSource("motion:9", seed=3)
    k = src.kernel(1)
    assert torch.equal(k, KernelSource("motion:9", seed=3).kernel(1))
    assert not torch.equal(k, src.kernel(2))
    assert k.shape == (9, 9) and abs(k.sum().item() - 1) < 1e-6
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, 40, generator=g)
    y1, gt1 = make_measurement(x, k, 0.05, seed=11, boundary="circular")
    y2, _ = make_measurement(x, k, 0.05, seed=11, boundary="circular")
    assert torch.equal(y1, y2) and torch.equal(gt1, x)
    yv, gtv = make_measurement(x, k, 0.0, seed=0, boundary="valid")
    assert yv.shape == gtv.shape == (3, 32, 32)
    # away from the wrap-around, the circular blur equals the valid one, aligned with the returned gt
    circ = blur(x[None].double(), k.double())[0]
    assert torch.allclose(yv.double(), circ[:, 4:36, 4:36], atol=1e-5)
    assert torch.equal(gtv, x[:, 4:36, 4:36])


def test_kernel_set_folder_is_padded_and_centred(tmp_path):
    a = np.zeros((5, 5), np.float32)
    a[2, 1:4] = 1
    b = np.ones((7, 7), np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    src = KernelSource(str(tmp_path))
    assert src.size == 7
    ka, kb = src.kernel(0), src.kernel(1)
    assert ka.shape == (7, 7) and ka[3, 2:5].tolist() == pytest.approx([1 / 3] * 3)
    assert torch.equal(src.kernel(2), ka)  # the set is used in turn
    with pytest.raises(ValueError):
        KernelSource("nonsense-spec")


def test_reduced_benchmark_end_to_end_gaussian_prior(tmp_path):
    """2 tiny images, σ=10, one blind and one non-blind method with the exact Gaussian prior."""
    out = tmp_path / "bench"
    cfg = BenchConfig(dataset=IMAGES, out=str(out), limit=2, crop=64, kernels="motion:9", sigmas="10",
                      methods="fast-em-pigdm:kernel_prior=l2,pigdm-nonblind", steps=4, prior="gaussian",
                      progress=False)
    res = run_benchmark(cfg)
    assert not res["errors"] and len(res["rows"]) == 4
    for r in res["rows"]:
        assert np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 and r["time_s"] > 0
        assert r["niqe"] is None  # 64×64 is smaller than one NIQE patch
        assert r["sharpness_index"] is not None and r["blur_strength"] is not None
    blind = [r for r in res["rows"] if r["method_name"] == "fast-em-pigdm"]
    assert all(r["kernel_mse"] is not None and r["kernel_mse_aligned"] <= r["kernel_mse"] for r in blind)
    nb = [r for r in res["rows"] if r["method_name"] == "pigdm-nonblind"]
    assert all("kernel_mse" not in r for r in nb)
    for f in ("summary.md", "summary.csv", "pareto.png", "data/inputs/cbsd68_101085_s10.npy",
              "data/kernels/cbsd68_101085.npy", "outputs/pigdm-nonblind/cbsd68_101085_s10.png"):
        assert os.path.getsize(out / f) > 0
    md = (out / "summary.md").read_text()
    assert "fast-em-pigdm:kernel_prior=l2" in md and "pigdm-nonblind" in md


def test_cli_bench_and_merge(tmp_path, dummy, capsys):
    from diffem.cli import main

    args = ["bench", "--dataset", IMAGES, "--out", str(tmp_path / "o"), "--methods", "test-dummy",
            "--sigmas", "10", "--kernels", "motion:9", "--crop", "48", "--prior", "gaussian", "--no-progress"]
    assert main(args + ["--shard", "0/2"]) == 0
    assert main(args + ["--shard", "1/2"]) == 0
    assert main(["bench-merge", str(tmp_path / "o")]) == 0
    assert "merged 3 rows" in capsys.readouterr().out
    assert main(["bench", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["bench", "--dataset", IMAGES, "--out", str(tmp_path / "y"), "--methods", "no-such-method"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_unsized_kernel_set_names_load_the_shipped_sets(monkeypatch, tmp_path):
    """Bug 1: ``levin`` without a size called load_kernel_set without its size; the TypeError was
    swallowed and every unsized set reported "not found" unless a data folder was given."""
    monkeypatch.delenv("DIFFEM_KERNELS", raising=False)
    monkeypatch.chdir(tmp_path)
    src = KernelSource("levin")
    assert src.size == 27 and len(src._set) == 8           # the largest Levin kernel is 27×27
    assert abs(float(src.kernel(3).sum()) - 1) < 1e-6


@pytest.mark.parametrize("spec, n", [("levin09:33", 8), ("usrnet:33", 12), ("lai-uniform:75", 4), ("Levin:33", 8)])
def test_advertised_sized_kernel_sets_work(spec, n, monkeypatch, tmp_path):
    """Bug 2: ``levin09:33``, ``usrnet:33``, ``lai-uniform:33`` failed with "unknown kernel set" (the spec
    was lower-cased and the alias table differed from the loader's)."""
    monkeypatch.delenv("DIFFEM_KERNELS", raising=False)
    monkeypatch.chdir(tmp_path)
    src = KernelSource(spec)
    size = int(spec.split(":")[1])
    assert src.size == size and len(src._set) == n and src.kernel(n - 1).shape == (size, size)


def test_lai_uniform_at_33_keeps_the_kernels_that_fit_and_says_so():
    with pytest.warns(UserWarning, match="3 of the 4 kernels"):
        src = KernelSource("lai-uniform:33")
    assert len(src._set) == 1


def test_tuning_real_kernels_are_shrunk_into_the_support_with_a_margin(tmp_path):
    """The tune-real split's kernels: each estimate cropped to its support, shrunk to ≤ 27 px (15–27 in
    turn), centred in 33×33; the estimates' faint floor (< 2 % of the peak) outside it is gone."""
    from diffem.benchmark.data import TUNING_REAL_EXTENTS

    folder = tmp_path / "Lai16_real_estimates" / "npy"
    folder.mkdir(parents=True)
    line = np.full((61, 61), 1e-4, np.float32)   # a 41-px diagonal stroke on a faint floor
    for i in range(41):
        line[10 + i, 10 + i] = 1.0
    np.save(folder / "a_psf.npy", line)
    np.save(folder / "b_psf.npy", line.T[::-1].copy())
    src = KernelSource("tuning-real:33", kernel_root=str(tmp_path))
    assert src.size == 33 and len(src._set) == 2
    for j in range(2):
        k = src.kernel(j).numpy()
        rows, cols = np.nonzero(k > 1e-3 * k.max())
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        assert abs(k.sum() - 1) < 1e-5 and extent <= TUNING_REAL_EXTENTS[j] + 1
        assert extent >= TUNING_REAL_EXTENTS[j] - 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="kernel-root"):   # the set is not shipped: say where it is looked for
        KernelSource("tuning-real:33", kernel_root=str(tmp_path / "empty"))


def test_tuning_clean_kernels_are_turned_trajectories_shrunk_into_the_support():
    """The tune-clean split's 16 kernels: the shipped Lai16-uniform trajectories in 4 rotations, each
    within its extent (at most 17–27 px; a trajectory already smaller is not enlarged), non-negative,
    sum 1; kernel j + 4 is kernel j turned by 90°."""
    from diffem.benchmark.data import TUNING_CLEAN_EXTENTS

    src = KernelSource("tuning-clean:33")
    assert src.size == 33 and len(src._set) == 16
    for j in range(16):
        k = src.kernel(j).numpy()
        rows, cols = np.nonzero(k > 1e-3 * k.max())
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        assert k.min() >= 0 and abs(k.sum() - 1) < 1e-5
        assert 17 <= extent <= TUNING_CLEAN_EXTENTS[(j + j // 4) % 4] + 1
    for j in range(12):   # the turn shows in the support's orientation (height and width swap)
        a, b = (np.nonzero(src.kernel(i).numpy() > 0.05 * src.kernel(i).numpy().max()) for i in (j, j + 4))
        assert (np.ptp(a[0]) > np.ptp(a[1])) != (np.ptp(b[0]) > np.ptp(b[1])) or np.ptp(a[0]) == np.ptp(a[1])


def test_skip_takes_the_images_after_the_first_ones():
    from diffem.benchmark.data import list_images

    every = list_images(IMAGES)
    assert list_images(IMAGES, limit=2, skip=1) == every[1:3]
    with pytest.raises(ValueError, match="skip"):
        list_images(IMAGES, skip=len(every))


def test_valid_boundary_reaches_the_methods(tmp_path, monkeypatch):
    """Bug 5: ``--boundary valid`` only shaped the data; the methods still ran the circular model."""
    import diffem.api
    import diffem.benchmark.methods

    seen = []
    real = diffem.api.restore

    def spy(*args, **kwargs):
        seen.append(kwargs.get("boundary", "circular"))
        return real(*args, **kwargs)

    monkeypatch.setattr(diffem.api, "restore", spy)
    monkeypatch.setattr(diffem.benchmark.methods, "restore", spy, raising=False)
    cfg = BenchConfig(dataset=IMAGES, out=str(tmp_path / "b"), limit=1, crop=32, kernels="motion:9", sigmas="10",
                      methods="pigdm-nonblind,gauss-pigdm", steps=2, prior="gaussian", boundary="valid",
                      progress=False, summary=False, no_reference=False, error_ratio=False)
    res = run_benchmark(cfg)
    assert not res["errors"] and seen == ["valid", "valid"]
    assert all(r["boundary"] == "valid" for r in res["rows"])
