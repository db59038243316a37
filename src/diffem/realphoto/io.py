"""Reading and writing photos: 8/16-bit PNG, TIFF, JPEG, greyscale, alpha, EXIF orientation.

``read_photo`` returns a ``Photo``: the colour planes as float32 (H, W, C) in [0, 1] (C = 1 or 3),
the alpha plane untouched (or None) and the bit depth, so that ``write_photo`` can put the
restored image back in the same shape (16-bit in -> 16-bit out, alpha passed through).

Pillow decodes 16-bit RGB(A) PNG/TIFF to 8 bits; we recover the exact 16-bit values by
decoding twice, once keeping the high bytes and once the low bytes (same unfiltering, the
raw modes ``;16B`` and ``;16L`` differ only in which byte the unpacker keeps).
"""
from __future__ import annotations

import glob
import os
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffem.files import atomic_write
from diffem.realphoto.noise import jpeg_sigma

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".pnm")


@dataclass
class Photo:
    pixels: np.ndarray          # (H, W, C) float32 in [0, 1], C = 1 (greyscale) or 3
    alpha: np.ndarray | None    # (H, W) alpha plane in its original dtype, or None
    bit_depth: int              # 8 or 16
    path: str | None = None
    jpeg_step: float | None = None   # a JPEG's mean luminance quantisation step (0..255 scale), else None

    @property
    def compression_sigma(self) -> float:
        """The noise std (on [0, 1]) its JPEG compression added (``noise.jpeg_sigma``; 0 for other files): pass it
        to ``deblur_photo(…, compression_sigma=…)``."""
        return jpeg_sigma(self.jpeg_step)

    @property
    def grayscale(self) -> bool:
        return self.pixels.shape[2] == 1


def expand_inputs(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (their image files, sorted, not recursive) and glob patterns -> file list.

    Returns (files, problems); a problem is (spec, message) for a spec that gave no file.
    """
    files, problems = [], []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, f)))
            if not found:
                problems.append((spec, f"folder {spec!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})"))
            files += found
        elif os.path.exists(spec):
            files.append(spec)
        elif glob.has_magic(spec):
            found = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
            if not found:
                problems.append((spec, f"pattern {spec!r} matches no file"))
            files += found
        else:
            problems.append((spec, f"input file {spec!r} does not exist"))
    # keep order, drop duplicates
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _rawmode(tile) -> str:
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args if isinstance(args, str) else str(args[0])


def _decode_16bit(path: str) -> np.ndarray | None:
    """Exact uint16 (H, W, C) pixels of a 16-bit RGB/RGBA file that Pillow would cut to 8 bits, else None."""
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA") or len(im.tile) != 1:
            return None
        raw = _rawmode(im.tile[0])
        if not raw.endswith((";16B", ";16L", ";16N")):
            return None
    planes = []
    for order in ("16B", "16L"):  # high bytes, then low bytes
        with Image.open(path) as im:
            t = im.tile[0]
            new = raw[:-3] + order
            args = new if isinstance(t.args, str) else (new,) + tuple(t.args[1:])
            im.tile = [t._replace(args=args)]
            planes.append(np.asarray(im).astype(np.uint16))
    hi, lo = planes
    if raw.endswith("16L") or (raw.endswith("16N") and sys.byteorder == "little"):
        hi, lo = lo, hi
    return (hi << 8) | lo


def read_photo(path: str) -> Photo:
    """Read an image file. Raises ValueError (naming the file) if it is not a readable image."""
    if not os.path.isfile(path):
        raise ValueError(f"input file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"input file {path!r} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            im.load()  # raises OSError on a truncated file
            tables = getattr(im, "quantization", None) if im.format == "JPEG" else None
            jpeg_step = float(np.mean(tables[0])) if tables and 0 in tables else None
            w, h = im.size
            if w == 0 or h == 0:
                raise ValueError(f"input {path!r} has zero size ({w}x{h})")
            arr16 = _decode_16bit(path)
            if arr16 is None:
                arr, alpha, bits = _pixels_from_pil(im)
            else:
                arr = arr16[..., :3].astype(np.float32) / 65535.0
                alpha = arr16[..., 3].copy() if arr16.shape[2] == 4 else None
                bits = 16
    except UnidentifiedImageError:
        raise ValueError(f"input {path!r} is not an image file Pillow can read") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"input {path!r} could not be decoded (truncated or corrupt: {e})") from None
    if orientation not in (None, 1):
        arr, alpha = _exif_rotate(arr, alpha, orientation)
    return Photo(np.ascontiguousarray(arr, dtype=np.float32), alpha, bits, path, jpeg_step)


def _pixels_from_pil(im: Image.Image):
    mode = im.mode
    alpha = None
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.float32)[..., None] / 65535.0, None, 16
    if mode == "I":  # 32-bit int greyscale; 16-bit PNG greyscale also opens as "I" in some Pillows
        a = np.asarray(im).astype(np.float64)
        bits = 16 if a.max(initial=0) > 255 or im.format == "PNG" else 8
        return (a / (65535.0 if bits == 16 else 255.0)).astype(np.float32)[..., None], None, bits
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        return np.clip(a, 0, 1)[..., None], None, 16
    if mode in ("1", "L"):
        return np.asarray(im.convert("L")).astype(np.float32)[..., None] / 255.0, None, 8
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"))
        return a[..., :1].astype(np.float32) / 255.0, a[..., 1].copy(), 8
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"))
        return a[..., :3].astype(np.float32) / 255.0, a[..., 3].copy(), 8
    # RGB, CMYK, YCbCr, LAB, HSV ...
    return np.asarray(im.convert("RGB")).astype(np.float32) / 255.0, None, 8


def _exif_rotate(arr, alpha, orientation):
    """Apply the EXIF orientation (as PIL.ImageOps.exif_transpose does) to numpy planes."""
    ops = {2: [np.fliplr], 3: [lambda a: np.rot90(a, 2)], 4: [np.flipud],
           5: [lambda a: np.rot90(a, 1), np.flipud], 6: [lambda a: np.rot90(a, -1)],
           7: [lambda a: np.rot90(a, -1), np.flipud], 8: [lambda a: np.rot90(a, 1)]}
    for op in ops.get(int(orientation), []):
        arr = op(arr)
        alpha = op(alpha) if alpha is not None else None
    return arr, alpha


# ---------------------------------------------------------------------------------------------
# writing (diffem.files.atomic_write: a temp file in the destination folder, then os.replace)

def _png16_bytes(a: np.ndarray) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit RGB). a: (H, W, C) uint16, C in 1..4."""
    H, W, C = a.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[C]
    rows = np.ascontiguousarray(a.astype(">u2")).view(np.uint8).reshape(H, W * C * 2)
    raw = np.concatenate([np.zeros((H, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_photo(path: str, pixels: np.ndarray, alpha: np.ndarray | None = None, bit_depth: int = 8) -> None:
    """Write (H, W, C) float pixels in [0, 1] (C = 1 or 3) plus an optional alpha plane.

    16-bit output is supported for PNG (and TIFF when ``tifffile`` is installed).
    """
    pixels = np.clip(np.asarray(pixels, dtype=np.float64), 0, 1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jpg", ".jpeg"):
        bit_depth, alpha = 8, None  # JPEG: 8-bit, no alpha
    scale = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    q = np.round(pixels * scale).astype(dtype)
    if alpha is not None:
        a = np.asarray(alpha)
        if a.dtype != dtype:  # alpha kept exactly when depths agree; rescaled otherwise
            a = np.round(a.astype(np.float64) / np.iinfo(a.dtype).max * scale).astype(dtype)
        q = np.concatenate([q, a[..., None]], axis=2)

    def write(tmp):
        if bit_depth == 16 and ext == ".png":
            with open(tmp, "wb") as f:
                f.write(_png16_bytes(q))
        elif bit_depth == 16 and ext in (".tif", ".tiff"):
            try:
                import tifffile
            except ImportError:
                raise ValueError("16-bit TIFF output needs the 'tifffile' package; use PNG") from None
            tifffile.imwrite(tmp, q if q.shape[2] > 1 else q[..., 0])
        else:
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[q.shape[2]]
            img = Image.fromarray(q[..., 0] if q.shape[2] == 1 else q, mode=mode)
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, None)
            kwargs = {"quality": 95} if fmt == "JPEG" else {}
            img.save(tmp, format=fmt, **kwargs)

    atomic_write(path, write)


def kernel_to_image(kernel: np.ndarray, zoom: int | None = None) -> np.ndarray:
    """A kernel scaled for viewing: max -> 1, nearest-neighbour zoom to about 256 px."""
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.max() if k.max() > 0 else k
    if zoom is None:
        zoom = max(1, 256 // k.shape[0])
    return np.kron(k, np.ones((zoom, zoom)))[..., None]


__all__ = ["Photo", "read_photo", "write_photo", "expand_inputs",
           "kernel_to_image", "IMAGE_EXTENSIONS"]
