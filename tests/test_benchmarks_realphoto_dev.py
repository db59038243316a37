"""benchmarks/realphoto_dev.py (issue 13's dev set and its scoring): design, blur, alignment, resumability."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffem.realphoto import read_photo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import realphoto_dev as dev  # noqa: E402


def test_pairs_cover_every_category_kernel_and_photo_number_once():
    p = dev.pairs()
    assert len(p) == 20 and len({q["name"] for q in p}) == 20 and [q["seed"] for q in p] == list(range(20))
    assert len({(q["category"], q["source_kernel"]) for q in p}) == 20
    assert len({(q["source_kernel"], q["source_photo"][-6:]) for q in p}) == 20
    assert {q["source_photo"] for q in p if q["category"] == "text"} >= {"text_05.png"}  # the RGBA photo


def test_fft_blur_is_diffem_blur_valid():
    g = torch.Generator().manual_seed(0)
    x, k = torch.rand(1, 3, 40, 37, generator=g, dtype=torch.float64), torch.rand(9, 9, generator=g, dtype=torch.float64)
    ref = dev.blur_valid_fft(x[0].permute(1, 2, 0).numpy(), k.numpy())
    from diffem.physics import blur_valid

    assert np.abs(ref - blur_valid(x, k)[0].permute(1, 2, 0).numpy()).max() < 1e-12


def test_shifted_psnr_finds_the_shift():
    ref = np.random.default_rng(0).random((50, 60, 3))
    p, arg = dev.shifted_psnr(np.roll(ref, (2, -3), axis=(0, 1)), ref, shift=4)
    assert arg == [2, -3] and p == 100.0


def test_make_aligns_blurry_and_truth_and_score_is_resumable(tmp_path):
    sharp, kern = tmp_path / "sharp", tmp_path / "kernels"
    sharp.mkdir(), kern.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((90, 100, 3)) * 255).astype(np.uint8)).save(sharp / "manmade_01.png")
    delta = np.zeros((7, 7), np.float32)
    delta[3, 3] = 1
    np.save(kern / "kernel_01.npy", delta)
    data, res = tmp_path / "dev", tmp_path / "res"
    argv = ["make", "--out", str(data), "--sharp", str(sharp), "--kernels", str(kern), "--limit", "1", "--crop", "48"]
    assert dev.main(argv) == 0
    m = json.loads((data / "manifest.json").read_text())["pairs"][0]
    y, x = dev.read_rgb(data / m["blurry"]), dev.read_rgb(data / m["sharp"])
    assert y.shape == x.shape == (48, 48, 3) and m["kernel_size"] == 7
    assert np.abs(y - x).max() < 6.5 / 255 and abs(np.std(y - x) * 255 - 1) < 0.25  # delta kernel: truth + σ 1/255
    assert dev.main(argv) == 0  # resumable: nothing rewritten
    assert dev.main(["score", "--data", str(data), "--out", str(res), "--method", "l0", "--shift", "2"]) == 0
    assert dev.main(["score", "--data", str(data), "--out", str(res), "--method", "l0", "--shift", "2"]) == 0
    rows = (res / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["ok"]
    assert (res / "summary.md").exists() and (res / "gains.png").exists()


def test_make_jpeg_saves_the_same_blurry_photo_as_a_jpeg_of_that_quality(tmp_path):
    sharp, kern = tmp_path / "sharp", tmp_path / "kernels"
    sharp.mkdir(), kern.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((90, 100, 3)) * 255).astype(np.uint8)).save(sharp / "natural_02.png")
    np.save(kern / "kernel_01.npy", np.full((5, 5), 1 / 25, np.float32))
    common = ["--sharp", str(sharp), "--kernels", str(kern), "--names", "natural_02_k1", "--crop", "48"]
    assert dev.main(["make", "--out", str(tmp_path / "png"), *common]) == 0
    assert dev.main(["make", "--out", str(tmp_path / "jpg"), "--jpeg", "75", *common]) == 0
    m = json.loads((tmp_path / "jpg" / "manifest.json").read_text())
    assert m["settings"]["jpeg"] == 75 and [p["name"] for p in m["pairs"]] == ["natural_02_k1"]
    Image.open(tmp_path / "png" / "blurry" / "natural_02_k1.png").save(tmp_path / "ref.jpg", quality=75)
    with Image.open(tmp_path / "jpg" / m["pairs"][0]["blurry"]) as im, Image.open(tmp_path / "ref.jpg") as ref:
        assert im.format == "JPEG" and np.array_equal(np.asarray(im), np.asarray(ref))   # the PNG, saved at 75
    assert dev.main(["make", "--out", str(tmp_path / "x"), "--jpeg", "99", *common]) != 0


def test_shifted_psnr_matches_the_direct_search():
    rng = np.random.default_rng(2)
    ref, img = rng.random((40, 45, 3)), rng.random((40, 45, 3))
    img[5:30, 5:35] = ref[3:28, 7:37] + 0.05 * rng.standard_normal((25, 30, 3))
    s, b = 3, 3 + dev.BORDER
    direct = max((10 * np.log10(1 / np.mean((img[b + i:40 - b + i, b + j:45 - b + j] - ref[b:40 - b, b:45 - b]) ** 2)), [i, j])
                 for i in range(-s, s + 1) for j in range(-s, s + 1))
    p, arg = dev.shifted_psnr(img, ref, s)
    assert arg == direct[1] and abs(p - direct[0]) < 1e-3


def test_candidates_scores_the_pipeline_candidates_and_the_true_kernel(tmp_path, capsys):
    sharp, kern = tmp_path / "sharp", tmp_path / "kernels"
    sharp.mkdir(), kern.mkdir()
    rng = np.random.default_rng(3)
    blocks = np.kron(rng.random((12, 12, 3)), np.ones((10, 10, 1)))   # piecewise-constant: edges to deblur
    Image.fromarray((blocks * 255).astype(np.uint8)).save(sharp / "manmade_01.png")
    line = np.zeros((7, 7), np.float32)
    line[3] = 1 / 7
    np.save(kern / "kernel_01.npy", line)
    data, out = tmp_path / "dev", tmp_path / "cand.jsonl"
    assert dev.main(["make", "--out", str(data), "--sharp", str(sharp), "--kernels", str(kern), "--limit", "1",
                     "--crop", "96"]) == 0
    argv = ["candidates", "--data", str(data), "--out", str(out), "--threads", "1", "--shift", "4"]
    assert dev.main(argv) == 0 and dev.main(argv) == 0   # the second run only prints: resumable
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert len(rows) == 1
    scores = rows[0]["scores"]
    pipeline = {"multiscale-25", "l0-nnls-25", "spectral-25", "spectral-flipped-25"}
    assert set(scores) == pipeline | {"true", "none"}
    assert rows[0]["choice"] in pipeline   # the choice is among the pipeline's own
    assert scores["none"]["ratio"] == 1.0 and abs(scores["none"]["psnr"] - rows[0]["psnr_in"]) < 1   # denoised y
    assert scores["true"]["psnr"] > rows[0]["psnr_in"] + 3    # the true kernel deblurs
    assert "true kernel" in capsys.readouterr().out
    assert rows[0]["sigma_judge_255"] == max(rows[0]["sigma_255"], 1.0)   # a PNG: no compression noise
    assert dev.main(["candidates", "--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    # the same photo as a JPEG: judged, as deblur_photo does, with the compression noise of its table
    assert dev.main(["make", "--out", str(tmp_path / "jpg"), "--sharp", str(sharp), "--kernels", str(kern),
                     "--limit", "1", "--crop", "96", "--jpeg", "75"]) == 0
    jpeg_out = tmp_path / "jpg.jsonl"
    assert dev.main(["candidates", "--data", str(tmp_path / "jpg"), "--out", str(jpeg_out), "--threads", "1"]) == 0
    row = json.loads(jpeg_out.read_text())
    step = read_photo(str(tmp_path / "jpg" / "blurry" / "manmade_01_k1.jpg")).jpeg_step
    assert row["sigma_judge_255"] == pytest.approx(math.hypot(row["sigma_255"], 5 * step / 29))
