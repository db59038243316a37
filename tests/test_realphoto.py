"""diffem.realphoto: file formats, σ estimation, boundaries, tiling, the photo pipeline."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from diffem.kernels.loaders import BUNDLED
from diffem.measurement import parse_sigma
from diffem.physics import blur, blur_valid
from diffem.realphoto import (crop, deblur_photo, deconv_valid, estimate_sigma, informative_window, map_tiles, pad_periodic,
                              read_photo, wiener_deconv, write_photo)
from diffem.realphoto.colour import linear_to_srgb, srgb_slope, srgb_to_linear
from diffem.realphoto.noise import sigma_mad, sigma_pca
from diffem.realphoto.tiling import saturated, tile_spans

DATA = Path(__file__).parent / "data"


def _photo():  # (1,3,96,96) float64 real photo crop (CBSD68)
    a = np.asarray(Image.open(DATA / "photo_cbsd68_crop.png"))
    return torch.tensor(a, dtype=torch.float64).permute(2, 0, 1)[None] / 255


def _kernel():  # Levin et al. 2009 kernel 2, 17×17
    return torch.tensor(np.load(BUNDLED / "Levin09" / "levin09_k2.npy"), dtype=torch.float64)


def _psnr(a, b):
    return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))


# ---------------------------------------------------------------------------------------- io

def test_16bit_png_round_trip_is_exact_rgb_rgba_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        q = rng.integers(0, 65536, size=(9, 13, channels), dtype=np.uint16)
        alpha = rng.integers(0, 65536, size=(9, 13), dtype=np.uint16) if channels == 3 else None
        path = str(tmp_path / f"c{channels}.png")
        write_photo(path, q / 65535.0, alpha, bit_depth=16)
        photo = read_photo(path)
        assert photo.bit_depth == 16 and photo.pixels.shape == (9, 13, channels)
        np.testing.assert_array_equal(np.round(photo.pixels * 65535).astype(np.uint16), q)
        if alpha is not None:
            np.testing.assert_array_equal(photo.alpha, alpha)


def test_16bit_tiff_is_read_exactly(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    q = np.random.default_rng(1).integers(0, 65536, size=(11, 7, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", q)
    photo = read_photo(str(tmp_path / "a.tif"))
    assert photo.bit_depth == 16
    np.testing.assert_array_equal(np.round(photo.pixels * 65535).astype(np.uint16), q)


def test_exif_orientation_matches_pil_exif_transpose(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, size=(5, 8, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(a).save(path, exif=exif)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path))).astype(np.float32) / 255
        got = read_photo(str(path)).pixels
        assert got.shape == expected.shape, orientation
        np.testing.assert_array_equal(got, expected)


def test_greyscale_with_alpha_and_palette(tmp_path):
    la = np.random.default_rng(3).integers(0, 256, size=(6, 5, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    p = read_photo(str(tmp_path / "la.png"))
    assert p.grayscale and p.bit_depth == 8
    np.testing.assert_array_equal(p.alpha, la[..., 1])
    np.testing.assert_array_equal(np.round(p.pixels[..., 0] * 255), la[..., 0])
    Image.fromarray(la[..., 0]).convert("P").save(tmp_path / "p.png")
    assert read_photo(str(tmp_path / "p.png")).pixels.shape == (6, 5, 3)


def test_a_jpeg_reports_its_quantisation_step_and_the_noise_it_adds(tmp_path):
    """read_photo keeps the mean step of a JPEG's luminance quantisation table (None for a PNG); jpeg_sigma
    turns it into a noise std: 5/255 at quality 75's step (29), proportionally, and 0 for a file that is no JPEG."""
    from diffem.realphoto.noise import jpeg_sigma

    a = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    steps = {}
    for quality in (75, 95):
        Image.fromarray(a).save(tmp_path / f"q{quality}.jpg", quality=quality)
        with Image.open(tmp_path / f"q{quality}.jpg") as im:
            steps[quality] = float(np.mean(im.quantization[0]))
        photo = read_photo(str(tmp_path / f"q{quality}.jpg"))
        assert photo.jpeg_step == pytest.approx(steps[quality])
        assert photo.compression_sigma == pytest.approx(jpeg_sigma(steps[quality]))
    Image.fromarray(a).save(tmp_path / "a.png")
    png = read_photo(str(tmp_path / "a.png"))
    assert png.jpeg_step is None and png.compression_sigma == 0
    assert steps[95] < steps[75] == pytest.approx(29, abs=0.1)
    assert jpeg_sigma(29) == pytest.approx(5 / 255) and jpeg_sigma(2 * 29) == pytest.approx(10 / 255)
    assert jpeg_sigma(None) == 0.0


def test_the_restoration_counts_jpeg_noise_as_the_root_of_the_step():
    """jpeg_restoration_sigma: 0.6 × √step / 255 from jpeg_sigma's value for the same step (quality 75: 3.2/255
    where the judge counts 5/255); 0 for a file that is no JPEG; below jpeg_sigma from a step of 13 up."""
    from diffem.realphoto.noise import jpeg_restoration_sigma, jpeg_sigma

    assert jpeg_restoration_sigma(jpeg_sigma(29)) == pytest.approx(0.6 * 29 ** 0.5 / 255)
    assert jpeg_restoration_sigma(jpeg_sigma(4 * 29)) == pytest.approx(2 * jpeg_restoration_sigma(jpeg_sigma(29)))
    assert jpeg_restoration_sigma(jpeg_sigma(None)) == 0.0
    assert jpeg_restoration_sigma(jpeg_sigma(13)) < jpeg_sigma(13)
    assert jpeg_restoration_sigma(jpeg_sigma(11)) > jpeg_sigma(11)


def test_bad_files_raise_value_error_naming_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 100).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("text.png", "empty.png", "cut.png", "missing.png"):
        with pytest.raises(ValueError, match=name):
            read_photo(str(tmp_path / name))


# ----------------------------------------------------------------------------------- noise

@pytest.mark.parametrize("sigma255", [5, 20])
def test_sigma_estimators_on_a_blurred_real_photo(sigma255):
    g = torch.Generator().manual_seed(sigma255)
    y = blur_valid(_photo(), _kernel())
    y = y + sigma255 / 255 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    for est in (sigma_mad, sigma_pca):
        s = est(y) * 255
        assert abs(s - sigma255) < 0.15 * sigma255, (est.__name__, s)


def test_estimate_sigma_is_clipped_and_checks_its_method():
    flat = torch.full((3, 32, 32), 0.5)
    assert estimate_sigma(flat) == pytest.approx(1 / 255)       # floor, never 0
    assert estimate_sigma(flat, clip=False) == 0.0
    with pytest.raises(ValueError, match="method"):
        estimate_sigma(flat, method="nope")


def test_parse_sigma():
    assert parse_sigma("auto", allow_auto=True) == "auto"
    assert parse_sigma("5/255") == pytest.approx(5 / 255) and parse_sigma(0.02) == 0.02
    assert parse_sigma("0.02") == 0.02 and parse_sigma(0, allow_zero=True) == 0.0
    for bad in ("0", "-0.1", "0.5", "2", "abc", "1/0", "nan", "auto", 0, True, None):
        with pytest.raises(ValueError, match="sigma"):
            parse_sigma(bad)


def test_estimate_sigma_defaults_to_the_more_accurate_pca_estimator():
    """Bug 3: the docstring (and benchmarks/realphoto.py) say PCA is the better estimator, but the
    default was "mad"."""
    g = torch.Generator().manual_seed(5)
    y = blur_valid(_photo(), _kernel())
    y = y + 5 / 255 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    assert estimate_sigma(y) == estimate_sigma(y, method="pca") != estimate_sigma(y, method="mad")


def test_estimate_sigma_reads_numpy_images_as_height_width_channels():
    """Bug 4: a (C, H, W) numpy array gave a misleading "image 3x64 too small"; numpy arrays are
    (H, W, C) everywhere and a (C, H, W) one is refused with a hint."""
    y = (_photo()[0].float() + 0.02 * torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(6)))
    assert estimate_sigma(y.permute(1, 2, 0).numpy()) == estimate_sigma(y)
    with pytest.raises(ValueError, match=r"looks like \(C, H, W\)"):
        estimate_sigma(y.numpy())


# ------------------------------------------------------------------------------ boundaries

def test_pad_periodic_shapes_crop_and_smooth_wrap():
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(0))
    p, box = pad_periodic(x, 9, 16)
    assert p.shape[-2] % 16 == 0 and p.shape[-1] % 16 == 0
    assert box[0] >= 9 and p.shape[-2] - box[0] - 37 >= 9
    assert torch.equal(crop(p, box), x)
    # a smooth image stays smooth across the periodic wrap (no jump from one side to the other)
    ramp = torch.linspace(0, 1, 60).view(1, 1, 1, 60).expand(1, 1, 10, 60)
    q, _ = pad_periodic(ramp, 20)
    jump = (q - torch.roll(q, 1, -1)).abs().amax()
    assert jump < 0.06          # the unpadded wrap jump is 1.0; inner steps are 1/59
    const, _ = pad_periodic(torch.full((1, 1, 7, 9), 0.3), 5, 8)
    assert torch.allclose(const, torch.full_like(const, 0.3))


def test_periodic_padding_removes_wraparound_ringing():
    """Wiener with the true kernel on a 'valid'-blurred real photo: padding gains > 3 dB."""
    x, k = _photo(), _kernel()
    r = k.shape[0] // 2
    g = torch.Generator().manual_seed(0)
    y = blur_valid(x, k) + 2 / 255 * torch.randn(1, 3, 80, 80, generator=g, dtype=torch.float64)
    truth = x[..., r:-r, r:-r]
    naive = _psnr(wiener_deconv(y, k, 2 / 255), truth)
    p, box = pad_periodic(y, r + 8)
    padded = _psnr(crop(wiener_deconv(p, k, 2 / 255), box), truth)
    assert padded > naive + 3, (naive, padded)


def test_wiener_inverts_a_noise_free_circular_blur():
    x, k = _photo(), _kernel()
    y = blur(x, k)
    assert _psnr(wiener_deconv(y, k, 0.0, lam_min=1e-7), x) > 45


# ---------------------------------------------------------------------------------- tiling

def test_map_tiles_identity_and_agrees_with_a_whole_image_run():
    y = torch.rand(3, 70, 95, generator=torch.Generator().manual_seed(1))
    out = map_tiles(y, lambda t: t, tile=32, overlap=8, context=5, multiple=16, progress=False)
    assert torch.allclose(out, y, atol=1e-6)
    # Wiener by tiles (34 px of context) is as good as Wiener on the whole padded photo (within 1 dB)
    x, k = _photo(), _kernel()
    r = k.shape[0] // 2
    truth = x[0, :, r:-r, r:-r].float()
    yb = blur_valid(x, k).float()[0] + 0.01 * torch.randn(3, 80, 80, generator=torch.Generator().manual_seed(2))
    whole_p, box = pad_periodic(yb[None], 17)
    whole = crop(wiener_deconv(whole_p, k.float(), 0.01), box)[0]
    tiled = map_tiles(yb, lambda t: wiener_deconv(t, k.float(), 0.01), tile=40, overlap=12, context=34,
                      progress=False)
    assert _psnr(tiled, truth) > _psnr(whole, truth) - 1.0


@pytest.mark.parametrize("n,tile,overlap", [(4000, 1024, 75), (3000, 1024, 75), (1100, 1024, 75), (1300, 1024, 32),
                                             (95, 32, 8), (33, 8, 4)])
def test_tile_spans_cover_the_axis_with_the_fewest_even_tiles(n, tile, overlap):
    starts, size = tile_spans(n, tile, overlap)
    assert starts[0] == 0 and starts[-1] + size == n and size <= max(1.25 * tile, 2 * overlap + 1)
    assert all(b - a <= size - overlap + 1 for a, b in zip(starts, starts[1:]))      # neighbours share ≥ overlap − 1 px
    assert len(starts) == (1 if n <= 1.25 * tile else math.ceil((n - overlap) / (int(1.25 * tile) - overlap)))
    assert len(starts) <= len(range(0, n - tile, tile - overlap)) + 1                 # never more than fixed-size tiles


def test_informative_window_prefers_texture_and_avoids_saturation():
    g = torch.Generator().manual_seed(0)
    y = torch.full((3, 200, 200), 0.5)
    y[:, 20:70, 20:70] = torch.rand(3, 50, 50, generator=g) * 0.3 + 0.35        # texture
    y[:, 120:180, 120:180] = (torch.rand(3, 60, 60, generator=g) > 0.5).float()  # stronger, but clipped
    top, left = informative_window(y, 64, ksize=9)
    assert 0 <= top <= 20 and 0 <= left <= 20 and top + 64 >= 70 and left + 64 >= 70


def test_judge_crops_add_the_lit_scene_of_a_night_photo():
    """Kernels are judged on the most informative crop with few pixels near a clipped value, within the largest
    support; where that leaves only flat ground (a few lamps spread over the scene), also on the most informative
    crop with few clipped pixels themselves. Without clipped pixels both rules agree: one crop."""
    from diffem.realphoto.pipeline import INFORMATIVE_SHARE, judge_crops
    from diffem.realphoto.tiling import informative_windows, window_structure

    g = torch.Generator().manual_seed(0)
    y = 0.2 + 0.01 * torch.rand(3, 240, 240, generator=g)                  # dark, nearly flat ground
    y[:, :100, :100] = torch.rand(3, 100, 100, generator=g) * 0.5 + 0.2     # the lit scene, textured …
    y[:, 10:100:30, 10:100:30] = 1.0                                        # … with a few lamps (0.2 % clipped)
    assert window_structure(y, 0, 0, 96) > 100 * window_structure(y, 140, 140, 96) > 0
    far, = informative_windows(y, 96, 41, 1)   # dilated by 20 px, the lamps spoil the lit scene: the ground
    assert far[0] + far[1] > 100
    first, (top, left) = judge_crops(y, 41, 96)
    assert first == far and top < 20 and left < 20
    assert window_structure(y, top, left, 96) > window_structure(y, *far, 96) / INFORMATIVE_SHARE
    y[:, 10:100:30, 10:100:30] = 0.5                                        # no lamps: the rule is the old one
    assert judge_crops(y, 41, 96) == informative_windows(y, 96, 41, 1)
    assert judge_crops(y[:, :90, :90], 41, 96) == [(0, 0)]                  # a photo smaller than the crop


def test_scorer_averages_the_judge_crops_and_keeps_the_first_for_the_safeguard():
    """Where a region has two judge crops, the choice's r/r₀ and sparsity are their means and the safeguard's r/r₀
    is the first crop's, each as the safeguard's check computes it on that crop alone."""
    from diffem.blind.safeguard import check_kernel, no_blur_reference
    from diffem.denoisers import load_denoiser
    from diffem.metrics.no_reference import gradient_sparsity
    from diffem.physics import Blur, blur_valid, delta_kernel
    from diffem.realphoto.pipeline import _Scorer, judge_crops

    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.01 * torch.rand(3, 260, 260, generator=g)
    x[:, :110, :110] = torch.rand(3, 110, 110, generator=g) * 0.5 + 0.2
    x[:, 15:110:30, 15:110:30] = 1.0
    k = _kernel().float()[:9, :9]
    k = k / k.sum()
    y = (blur_valid(x[None], k)[0] + 2 / 255 * torch.randn(3, 252, 252, generator=g)).clamp(0, 1)
    y[:, 10:100:30, 10:100:30] = 1.0   # lamps, clipped
    crops = judge_crops(y, 41, 96)
    assert len(crops) == 2
    den, sigma, trusted = load_denoiser("ffdnet"), 3 / 255, torch.ones(252, 252, dtype=torch.bool)
    ratio, sparsity, first = _Scorer([(y[None], trusted)], sigma, den, 41, size=96)(k, [0])
    direct = []
    for t, l in crops:
        yc = y[None, :, t:t + 96, l:l + 96]
        nb = no_blur_reference(yc, Blur.for_measurement(yc, delta_kernel(41), sigma, "valid"), den)
        v = check_kernel(yc, None, Blur.for_measurement(yc, k, sigma, "valid"), den, no_blur=nb)
        direct.append((v["residual_ratio_relative"], float(gradient_sparsity(v["restored_image"]))))
    assert direct[0][0] != pytest.approx(direct[1][0], rel=1e-3)   # the crops disagree, so the test can tell
    assert first == pytest.approx(direct[0][0], rel=1e-5)
    assert ratio == pytest.approx((direct[0][0] + direct[1][0]) / 2, rel=1e-5)
    assert sparsity == pytest.approx((direct[0][1] + direct[1][1]) / 2, rel=1e-5)


# -------------------------------------------------------------------------------- pipeline

def test_deblur_photo_default_method_whole_photo():
    """multiscale-pnp on a small, odd-sized, greyscale 'valid'-blurred photo: its own size back, an
    auto-sized kernel trimmed to its support, the safeguard's verdict in info."""
    from diffem.physics import blur_valid, trim_kernel

    x = _photo()[0].float()
    y = blur_valid(x.mean(0, keepdim=True)[None], _kernel().float())[0, :, :79, :74]   # odd, non-square, grey
    y = (y + 2 / 255 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    r = deblur_photo(y, sigma="auto", device="cpu", progress=False)
    assert r.image.shape == (1, 79, 74) and r.window is None and r.restore in ("pnp", "denoised")
    assert r.sigma_estimated and r.sigma >= 1 / 255 and r.info["windows_tried"] == 1
    assert r.info["estimator"] == "multiscale-refined"   # a small photo: the 256² method's kernel
    assert r.kernel.shape[0] % 2 == 1 and 9 <= r.kernel.shape[0] <= (74 // 4) | 1   # auto: at most a quarter
    assert abs(float(r.kernel.sum()) - 1) < 1e-4 and r.kernel.min() >= 0
    assert r.info["kernel_support"] == trim_kernel(r.kernel).shape[-1] <= r.kernel.shape[0]
    assert isinstance(r.info["kernel_trusted"], bool) and r.info["residual_ratio_relative"] > 0


def test_bf16_only_in_the_photo_restoration():
    """bf16=True: the PnP restorations' early iterations in bf16 (the tiles and the kernels' scores), the
    kernel estimation in fp32 (the same kernel, bit for bit, here), an image close to the fp32 one; a bad
    value is an error naming the argument."""
    from diffem.physics import blur_valid
    from diffem.realphoto.pipeline import BF16_FROM

    x = _photo()[0].float()
    y = blur_valid(x[None], _kernel().float())[0, :, :64, :64]
    y = (y + 2 / 255 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    opts = dict(sigma=10 / 255, kernel_size=9, device="cpu", progress=False, fallback=False)
    fp32, bf16 = (deblur_photo(y, bf16=b, **opts) for b in (False, True))
    assert fp32.info["pnp_bf16_from"] is None and bf16.info["pnp_bf16_from"] == BF16_FROM
    assert torch.equal(fp32.kernel, bf16.kernel)
    assert 0 < float((fp32.image - bf16.image).abs().mean()) < 0.01
    with pytest.raises(ValueError, match="bf16"):
        deblur_photo(y, bf16="yes", **opts)


def test_candidate_choice_gates_on_data_fit_then_takes_the_sparsest():
    from diffem.realphoto.pipeline import BLUR_EVIDENCE, RATIO_GATE, _choose

    # (r/r₀, gradient sparsity): the sparsest restoration (2) fits the data clearly worse than the best (0)
    scores = [(0.90, 0.70), (0.90 * RATIO_GATE * 0.999, 0.60), (0.90 * RATIO_GATE * 1.001, 0.55)]
    assert _choose(scores) == 1
    assert _choose([(1.3, 0.5)]) == 0 and _choose([(1.0, 0.5), (0.5, 0.58)]) == 1
    # a kernel that explains the data worse than 'no blur' loses to one that explains it better (unless its
    # restoration is much sparser: the next test)
    assert _choose([(1.01, 0.55), (0.97, 0.6)]) == 1 and _choose([(1.01, 0.5), (1.02, 0.4)]) == 1
    # … and so does one that explains it barely better than 'no blur' (the wrong 25 px kernel of a dev photo)
    assert _choose([(BLUR_EVIDENCE + 0.005, 0.55), (BLUR_EVIDENCE - 0.03, 0.63)]) == 1


def test_a_much_sparser_trusted_candidate_overrides_the_data_fit_gate():
    from diffem.blind.safeguard import RELATIVE_LIMIT
    from diffem.realphoto.pipeline import SPARSITY_OVERRIDE, _choose

    # the dev photo saturated_02_k4's scores: three dots fit best, ℓ0-NNLS's whole hook (3) fits worse but
    # the safeguard trusts it and its restoration is far sparser; the spectral kernels (4, 5) are rough
    scores = [(0.848, 0.657), (0.844, 0.667), (0.844, 0.657), (1.031, 0.531), (3.49, 0.613), (1.81, 0.611)]
    assert _choose(scores, rough=(4, 5)) == 3
    dot = (0.844, 0.657)
    assert _choose([dot, (RELATIVE_LIMIT * 1.001, 0.2)]) == 0               # not trusted: never
    assert _choose([dot, (0.95, 0.657 * SPARSITY_OVERRIDE * 1.01)]) == 0    # not sparser by enough
    assert _choose([dot, (0.95, 0.657 * SPARSITY_OVERRIDE * 0.99)]) == 1
    assert _choose([dot, (0.95, 0.2)], rough=(1,)) == 0                    # a rough kernel: never


def test_a_rough_candidate_competes_only_when_it_fits_nearly_as_well_as_the_best_other():
    from diffem.realphoto.pipeline import ROUGH_GATE, _choose

    # the spectral kernel (1) is the sparsest and within RATIO_GATE of the best, but not within ROUGH_GATE
    scores = [(0.88, 0.47), (0.88 * ROUGH_GATE * 1.01, 0.43)]
    assert _choose(scores) == 1 and _choose(scores, rough=(1,)) == 0
    assert _choose([(0.88, 0.47), (0.88 * ROUGH_GATE * 0.99, 0.43)], rough=(1,)) == 1
    # it may also be the best fit, and then sets the gate for the others
    assert _choose([(0.90, 0.64), (0.84, 0.58)], rough=(1,)) == 1
    assert _choose([(0.9, 0.5)], rough=(0,)) == 0   # nothing else to compare with
    # where no other candidate found blur (a real photo: all ≥ 1.6), a rough kernel alone does not decide
    assert _choose([(1.64, 0.49), (4.1, 0.51), (0.65, 0.48)], rough=(2,)) == 0


def test_deblur_photo_windowed_paths_of_a_diffusion_method():
    x = _photo()[0].float()
    r = deblur_photo(x, sigma="3/255", prior="gaussian", method="fast-em-pigdm", kernel_size=5, steps=2,
                     device="cpu", progress=False, window=32, restore="wiener", fallback=False)
    assert r.image.shape == (3, 96, 96) and r.restore == "wiener" and r.window[2:] == (32, 32)
    assert not r.sigma_estimated and r.sigma == pytest.approx(3 / 255)
    assert 0 <= float(r.image.min()) and float(r.image.max()) <= 1
    r2 = deblur_photo(x[:, :40, :40], sigma="3/255", prior="gaussian", method="fast-em-pigdm", kernel_size=5,
                      steps=2, device="cpu", progress=False, window=64, fallback=False)
    assert r2.restore == "pnp" and r2.samples.shape == (1, 3, 40, 40)   # auto: PnP with the sampler's kernel
    with pytest.raises(ValueError, match="kernel size"):
        deblur_photo(x[:, :20, :20], kernel_size=33, prior="gaussian")


def test_srgb_curves_are_inverse_and_the_slope_is_their_derivative():
    v = torch.linspace(0, 1, 2001, dtype=torch.float64)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(v)), v, atol=1e-12)
    assert float(srgb_to_linear(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(0.21404, abs=1e-5)  # IEC value
    h = 1e-6
    numeric = (srgb_to_linear(v[1:-1] + h) - srgb_to_linear(v[1:-1] - h)) / (2 * h)
    assert torch.allclose(srgb_slope(v[1:-1]), numeric, rtol=1e-4, atol=1e-6)


def test_linear_light_is_the_srgb_pipeline_run_on_linear_values():
    """linear_light=True = decode, deblur at σ × the curve's median slope, re-encode."""
    y = 0.1 + 0.8 * _photo()[0, :, :48, :48].float()   # no clipped pixels: the same trusted mask either way
    opts = dict(kernel_size=5, device="cpu", progress=False, fallback=False)
    res = deblur_photo(y, sigma=6 / 255, linear_light=True, **opts)   # σ × slope stays above the 1/255 floor
    ref = deblur_photo(srgb_to_linear(y), sigma=6 / 255 * float(srgb_slope(y).median()), **opts)
    assert res.info["linear_light"] and not ref.info["linear_light"]
    assert torch.allclose(res.kernel, ref.kernel) and torch.allclose(res.image, linear_to_srgb(ref.image), atol=1e-6)


def test_valid_model_deconvolution_matches_the_circular_case():
    """The exact non-circular solver on 'valid'-blurred data is within 0.5 dB of Wiener on a
    circularly blurred copy of the same photo (and better than periodic padding)."""
    x, k = _photo(), _kernel()
    r = k.shape[0] // 2
    truth = x[..., r:-r, r:-r]
    g = torch.Generator().manual_seed(3)
    s = 2 / 255
    y_valid = blur_valid(x, k) + s * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    y_circ = blur(truth, k) + s * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    circ = _psnr(wiener_deconv(y_circ, k, s), truth)
    p, box = pad_periodic(y_valid, r + 8)
    padded = _psnr(crop(wiener_deconv(p, k, s), box), truth)
    valid = _psnr(deconv_valid(y_valid, k, s, iters=60), truth)
    assert valid > circ - 0.5 and valid > padded + 1, (circ, padded, valid)


@pytest.mark.parametrize("ksize", [3, 25, 75])
def test_saturated_is_the_square_dilation_of_the_clipped_pixels(ksize):
    """The separable (row then column) max equals the (k|1)² square's dilation of the clipped pixels."""
    y = torch.rand(3, 120, 170, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    y[:, 30:33, 40:60] = 1.0    # a clipped highlight
    y[1, 100, 3] = 0.0          # one clipped shadow pixel in one channel, near the border
    clipped = ((y.amax(0) >= 0.98) | (y.amin(0) <= 0.02)).numpy()
    r = max(ksize // 2, 1)
    expected = ndimage.binary_dilation(clipped, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    assert clipped.sum() == 61 and np.array_equal(saturated(y, ksize).numpy(), expected)


def test_saturation_level_1_masks_only_exactly_clipped_values():
    y = torch.full((3, 40, 40), 0.5)
    y[0, 10, 10] = 0.99    # bright, not clipped
    y[2, 30, 30] = 1.0     # clipped
    assert saturated(y, 3, 0.98)[10, 10] and not saturated(y, 3, 1.0)[10, 10]
    assert saturated(y, 3, 1.0).sum() == 9 and saturated(y, 3, 1.0)[29:32, 29:32].all()


def test_unclipped_pixels_and_the_all_clipped_fallback():
    """The likelihood's and the judge's pixels: not within a pixel of a clipped value, or every pixel when
    fewer than a quarter would be left (nothing else to fit)."""
    from diffem.realphoto.pipeline import _unclipped

    y = torch.full((3, 20, 20), 0.5)
    y[:, 5, 5] = 1.0
    assert (~_unclipped(y, 1.0)).sum() == 9
    y[:, :16] = 1.0   # 80 % clipped
    assert _unclipped(y, 1.0).all()


def test_edge_distance_of_kernel_taps():
    """The small-photo path's trigger for the long-support candidates: how close a kernel's taps come to
    the edge of its support."""
    from diffem.realphoto.pipeline import edge_distance

    k = torch.zeros(9, 9)
    k[4, 4] = 1
    assert edge_distance(k) == 4
    k[4, 7] = 0.5
    assert edge_distance(k) == 1
    k[0, 4] = 0.1
    assert edge_distance(k) == 0
