"""End-to-end `diffem deblur` / `diffem demo` (in-process, Gaussian prior, tiny images, 2 steps)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from diffem.cli import main
from diffem.realphoto.io import write_photo

FAST = ["--prior", "gaussian", "--steps", "2", "--kernel-size", "5", "--device", "cpu", "--quiet"]
OUTPUTS = ("_deblurred.png", "_kernel.png", "_kernel.npy", "_figure.png", "_report.json")


def _img(path, shape=(36, 40, 3), mode=None, seed=0):
    a = np.random.default_rng(seed).integers(30, 220, size=shape, dtype=np.uint8)
    Image.fromarray(a, mode=mode).save(path)
    return path


def _run(capsys, *argv):
    code = main(["deblur", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_error(code, err, *words):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def _no_leftovers(folder):
    left = [f for f in os.listdir(folder) if f.startswith(".diffem-")]
    assert not left, left


# --------------------------------------------------------------------------- happy paths

def test_rgb_outputs_and_report(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    out = tmp_path / "out"
    code, err = _run(capsys, src, "-o", out, "--sigma", "5/255", "--save-samples", "--method", "fast-em-pigdm", *FAST)
    assert code == 0, err
    for suffix in OUTPUTS + ("_sample0.png",):
        assert (out / f"a{suffix}").is_file()
    rep = json.loads((out / "a_report.json").read_text())
    assert rep["sigma"] == pytest.approx(5 / 255) and rep["sigma_estimated"] is False
    assert rep["parameters"]["method"] == "fast-em-pigdm" and rep["diffem_version"]
    assert "total_s" in rep["timings"]
    k = np.load(out / "a_kernel.npy")
    assert k.shape == (5, 5) and abs(k.sum() - 1) < 1e-4
    assert Image.open(out / "a_deblurred.png").size == (40, 36)
    _no_leftovers(out)


def test_default_method_reports_the_safeguard(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    out = tmp_path / "out"
    code, err = _run(capsys, src, "-o", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    rep = json.loads((out / "a_report.json").read_text())
    assert rep["parameters"]["method"] == "multiscale-pnp" and rep["parameters"]["kernel_size"] == "auto"
    assert isinstance(rep["kernel_trusted"], bool) and rep["output"] in ("pnp", "denoised")
    assert rep["safeguard"]["residual_limit"] == pytest.approx(1.05)
    # the restoration's noise level is the estimate, floored at the default --sigma-floor (1/255)
    assert rep["parameters"]["sigma_floor"] == pytest.approx(1 / 255)
    assert rep["sigma_restore_255"] == pytest.approx(max(rep["sigma_255"], 1.0))
    assert not list(out.glob("a_sample*"))            # no posterior samples: nothing to save
    assert Image.open(out / "a_deblurred.png").size == (40, 36)


def test_a_jpeg_adds_its_compression_noise_to_the_estimated_sigma(tmp_path, capsys):
    """--jpeg-noise auto (the default): the kernels' judge's noise level combines σ with jpeg_sigma of the file's
    quantisation table in quadrature, the restoration's with jpeg_restoration_sigma (the kernel estimation keeps
    σ); --jpeg-noise 0 and a PNG: none."""
    from diffem.realphoto.noise import jpeg_restoration_sigma, jpeg_sigma

    a = np.asarray(Image.open(_img(tmp_path / "a.png", shape=(48, 48, 3))))
    Image.fromarray(a).save(tmp_path / "j.jpg", quality=75)
    with Image.open(tmp_path / "j.jpg") as im:
        step = float(np.mean(im.quantization[0]))
    fast = ["--kernel-size", "5", "--device", "cpu", "--quiet"]
    reports = {}
    for name, src, extra in (("auto", "j.jpg", []), ("off", "j.jpg", ["--jpeg-noise", "0"]), ("png", "a.png", []),
                             ("given", "j.jpg", ["--sigma", "2/255"])):
        code, err = _run(capsys, tmp_path / src, "-o", tmp_path / name, *extra, *fast)
        assert code == 0, err
        reports[name] = json.loads((tmp_path / name / f"{src[0]}_report.json").read_text())
    jpeg = jpeg_sigma(step) * 255
    share = jpeg_restoration_sigma(jpeg / 255) * 255
    auto, off, png, given = (reports[k] for k in ("auto", "off", "png", "given"))
    assert auto["jpeg_quantization_step"] == pytest.approx(step) and png["jpeg_quantization_step"] is None
    assert auto["compression_sigma_255"] == pytest.approx(jpeg)
    assert off["compression_sigma_255"] == 0 == png["compression_sigma_255"]
    assert auto["sigma_255"] == pytest.approx(off["sigma_255"])        # the estimate itself is unchanged
    assert auto["sigma_judge_255"] == pytest.approx(np.hypot(auto["sigma_255"], jpeg)) and jpeg > 4
    assert auto["sigma_restore_255"] == pytest.approx(np.hypot(auto["sigma_255"], share)) and 3 < share < jpeg
    assert off["sigma_restore_255"] == pytest.approx(max(off["sigma_255"], 1.0)) == off["sigma_judge_255"]
    assert given["sigma_255"] == pytest.approx(2) and given["sigma_restore_255"] == pytest.approx(np.hypot(2, share))
    assert given["sigma_judge_255"] == pytest.approx(np.hypot(2, jpeg))
    # a colour JPEG's kernels are judged on its luminance (its colour is coarser than any kernel explains)
    assert auto["safeguard"]["judged_on"] == "luminance" == given["safeguard"]["judged_on"]
    assert off["safeguard"]["judged_on"] == "all channels" == png["safeguard"]["judged_on"]
    assert all(r["safeguard"]["judge_crops"] == 1 for r in reports.values())   # small photos: one crop


def test_an_untrusted_kernel_gives_a_denoised_photo_and_a_warning(tmp_path, capsys, monkeypatch):
    """When the safeguard refuses the kernel (forced here with a limit of 0; its test is in
    test_blind.py) the report and the console say so and the photo is only denoised."""
    import diffem.realphoto.pipeline

    monkeypatch.setattr(diffem.realphoto.pipeline, "RELATIVE_LIMIT", 0.0)
    src = _img(tmp_path / "noise.png", shape=(64, 64, 3))
    out = tmp_path / "out"
    code = main(["deblur", str(src), "-o", str(out), "--quiet", "--device", "cpu", "--kernel-size", "9"])
    stdout = capsys.readouterr().out
    assert code == 0
    rep = json.loads((out / "noise_report.json").read_text())
    assert rep["kernel_trusted"] is False and rep["output"] == "denoised"
    assert "warning" in stdout and "only denoised" in stdout
    img = np.asarray(Image.open(out / "noise_deblurred.png"), dtype=np.float64)
    assert img.std() < np.asarray(Image.open(src), dtype=np.float64).std()    # denoised, not sharpened


def test_grayscale_in_grayscale_out(tmp_path, capsys):
    src = _img(tmp_path / "g.png", shape=(33, 30), mode="L")
    code, err = _run(capsys, src, "-o", tmp_path, *FAST)
    assert code == 0, err
    im = Image.open(tmp_path / "g_deblurred.png")
    assert im.mode == "L" and im.size == (30, 33)
    rep = json.loads((tmp_path / "g_report.json").read_text())
    assert rep["sigma_estimated"] is True and rep["channels"] == 1


def test_rgba_alpha_passed_through(tmp_path, capsys):
    a = np.random.default_rng(1).integers(0, 256, size=(34, 31, 4), dtype=np.uint8)
    Image.fromarray(a, mode="RGBA").save(tmp_path / "t.png")
    code, err = _run(capsys, tmp_path / "t.png", "-o", tmp_path / "o", *FAST)
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "o" / "t_deblurred.png"))
    assert out.shape == (34, 31, 4)
    np.testing.assert_array_equal(out[..., 3], a[..., 3])


def test_16bit_in_16bit_out(tmp_path, capsys):
    q = np.random.default_rng(2).integers(5000, 60000, size=(32, 35, 3), dtype=np.uint16)
    write_photo(str(tmp_path / "h.png"), q / 65535.0, bit_depth=16)
    code, err = _run(capsys, tmp_path / "h.png", "-o", tmp_path / "o", *FAST)
    assert code == 0, err
    from diffem.realphoto import read_photo
    back = read_photo(str(tmp_path / "o" / "h_deblurred.png"))
    assert back.bit_depth == 16 and back.pixels.shape == (32, 35, 3)
    # genuinely 16-bit: not all values are multiples of 257 (what an 8-bit image scaled up gives)
    assert (np.round(back.pixels * 65535).astype(np.int64) % 257 != 0).mean() > 0.5


def test_non_square_odd_size_and_several_inputs_with_one_failure(tmp_path, capsys):
    _img(tmp_path / "odd.png", shape=(37, 53, 3))
    (tmp_path / "bad.png").write_text("not an image")
    code, err = _run(capsys, tmp_path / "odd.png", tmp_path / "bad.png", "-o", tmp_path / "o", *FAST)
    assert code != 0 and "bad.png" in err
    assert Image.open(tmp_path / "o" / "odd_deblurred.png").size == (53, 37)  # the good one was done
    assert not list((tmp_path / "o").glob("bad_*"))
    _no_leftovers(tmp_path / "o")


# ---------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path, capsys):
    _one_line_error(*_run(capsys, tmp_path / "nope.png", "-o", tmp_path, *FAST), "nope.png", "does not exist")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_line_error(*_run(capsys, tmp_path / "empty", "-o", tmp_path / "o", *FAST), "no image")


def test_not_an_image(tmp_path, capsys):
    (tmp_path / "x.png").write_text("hello")
    _one_line_error(*_run(capsys, tmp_path / "x.png", "-o", tmp_path / "o", *FAST), "x.png", "not an image")
    assert not os.listdir(tmp_path / "o")


def test_truncated_file(tmp_path, capsys):
    data = _img(tmp_path / "full.png", shape=(60, 60, 3)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _one_line_error(*_run(capsys, tmp_path / "cut.png", "-o", tmp_path / "o", *FAST), "cut.png", "truncated")
    assert not os.listdir(tmp_path / "o")


def test_zero_size_images(tmp_path, capsys):
    (tmp_path / "zero.png").write_bytes(b"")
    _one_line_error(*_run(capsys, tmp_path / "zero.png", "-o", tmp_path / "o", *FAST), "zero.png", "empty")
    # a PNG whose header says 0×0 pixels
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    (tmp_path / "zero2.png").write_bytes(png)
    code, err = _run(capsys, tmp_path / "zero2.png", "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "zero2.png")


def test_image_smaller_than_kernel(tmp_path, capsys):
    src = _img(tmp_path / "small.png", shape=(20, 24, 3))
    code, err = _run(capsys, src, "-o", tmp_path / "o", "--prior", "gaussian", "--kernel-size", "33", "--quiet")
    _one_line_error(code, err, "small.png", "smaller than the kernel")


@pytest.mark.parametrize("sigma", ["0", "-0.01", "0.5", "0.7", "abc"])
def test_bad_sigma(tmp_path, capsys, sigma):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path / "o", "--sigma", sigma, *FAST), "sigma")


def test_bad_bf16(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path / "o", "--bf16", "yes", *FAST), "--bf16")


@pytest.mark.parametrize("level", ["0.5", "1.01", "nan", "abc"])
def test_bad_saturation(tmp_path, capsys, level):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path / "o", "--saturation", level, *FAST), "--saturation")


@pytest.mark.parametrize("floor", ["-0.01", "0.5", "abc"])
def test_bad_sigma_floor(tmp_path, capsys, floor):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path / "o", "--sigma-floor", floor, *FAST), "--sigma-floor")


@pytest.mark.parametrize("level", ["-0.01", "0.7", "lots"])
def test_bad_jpeg_noise(tmp_path, capsys, level):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path / "o", "--jpeg-noise", level, *FAST), "--jpeg-noise")


def test_unwritable_output_folder(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    _one_line_error(*_run(capsys, src, "-o", blocker / "sub", *FAST), "output")


def test_output_never_overwrites_an_input(tmp_path, capsys):
    a = _img(tmp_path / "a.png", seed=1)
    victim = _img(tmp_path / "a_deblurred.png", seed=2)  # what processing a.png would write
    before = victim.read_bytes()
    code, err = _run(capsys, a, victim, "-o", tmp_path, *FAST)
    assert code != 0 and "overwrite" in err
    assert victim.read_bytes() == before


def test_output_equal_to_the_single_input(tmp_path, capsys):
    a = _img(tmp_path / "a.png", seed=1)
    victim = _img(tmp_path / "a_deblurred.png", seed=2)
    before = victim.read_bytes()
    # only the victim is given: its own outputs are a_deblurred_deblurred.png etc., so it is processed...
    # ...but giving both makes a.png's outputs collide with an input: refused, one line
    code, err = _run(capsys, victim, a, "-o", tmp_path, "--sigma", "0.01", *FAST)
    assert code != 0 and sum("overwrite" in line for line in err.splitlines()) == 1
    assert victim.read_bytes() == before
    assert a.is_file()


def test_old_boundary_name_is_refused_with_the_new_one(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path, "--boundary", "periodic", *FAST), "--boundary", "circular")


def test_window_smaller_than_twice_the_kernel(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path, "--window", "40", "--kernel-size", "33"), "window")


def test_unknown_method_and_prior(tmp_path, capsys):
    src = _img(tmp_path / "a.png")
    _one_line_error(*_run(capsys, src, "-o", tmp_path, "--method", "magic", "--prior", "gaussian"), "method", "magic")
    _one_line_error(*_run(capsys, src, "-o", tmp_path, "--prior", "nosuchprior"), "prior", "nosuchprior")


def test_demo_runs_on_the_shipped_examples(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)            # the examples are package data: found from any folder
    code = main(["demo", "-o", str(tmp_path), "--prior", "gaussian", "--steps", "2", "--kernel-size", "9",
                 "--window", "64", "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "synthetic_chelsea_blurred_figure.png").is_file()
    assert (tmp_path / "real_cross_stitch_deblurred.png").is_file()
    assert str(tmp_path) in out
