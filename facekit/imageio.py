"""Reading and writing images: every common photo variant in, uint8 RGB out; writes never leave half files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facekit.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, the usual page background, rather than whatever colour they hid.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; a missing, corrupt or truncated file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_rgb8(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: unreadable image (corrupt, truncated or not an image: {err})") from None
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{path}: the image is empty")
    return np.array(array, dtype=np.uint8, order="C")  # writable: callers draw on it or hand it to torch


def _as_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"write_image: expected uint8 or float [0,1] pixels, got {array.dtype}")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"write_image: expected HxW, HxWx3 or HxWx4 pixels, got shape {array.shape}")
    return array


def durable_replace(temp: str | Path, path: str | Path) -> None:
    """Make a finished temporary file durable (fsync), then move it over `path`: a reader, even after a power
    cut, sees the old file or the whole new one."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def atomic_write(path: str | Path, write) -> Path:
    """Run write(temp_path) next to `path`, then move it into place durably: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(fd)
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the file's permissions
        durable_replace(temp, path)
    except BaseException as err:
        if temp:
            Path(temp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename and Path(err.filename).parent == path.parent:
            err.filename = str(path)  # the user named the file, not our temporary beside it
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir(path: str | Path) -> Path:
    """Create an output directory (and its parents), or say in one line why it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path} is a file (or lies under one); choose another output directory") from None
    except OSError as err:
        raise UserError(f"cannot create {path}: {err.strerror}; choose another output directory") from None
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; choose another output directory")
    if not os.access(path, os.W_OK):
        raise UserError(f"{path} is not writable; choose another output directory")
    return path


def clear_temporaries(path: str | Path) -> int:
    """Remove what an atomic write of `path` killed mid-way left behind (call it where one process owns the
    file, e.g. when a run resumes); returns how many."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.stem}.*{path.suffix}")) if path.parent.is_dir() else []
    for temp in stale:
        temp.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_image(path: str | Path, array: np.ndarray, quality: int = 95) -> Path:
    """Write uint8 (or float [0,1]) RGB/gray pixels; the format follows the suffix (PNG is lossless)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported image suffix (use one of {', '.join(IMAGE_SUFFIXES)})")
    image = Image.fromarray(_as_uint8(array))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}.get(path.suffix.lower(), path.suffix[1:].upper())
    if fmt == "JPEG" and image.mode == "RGBA":
        image = image.convert("RGB")
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    return atomic_write(path, lambda temp: image.save(temp, format=fmt, **options))


def list_images(root: str | Path) -> list[Path]:
    """Image files under `root` (recursive), sorted, hidden files skipped."""
    root = Path(root)
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
