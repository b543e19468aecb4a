import numpy as np
import pytest
from PIL import Image

from facekit.errors import UserError
from facekit.faces.imageio import list_images, read_image, write_image


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)


def test_png_roundtrip_is_lossless_and_atomic(tmp_path):
    image = _gradient()
    path = write_image(tmp_path / "sub" / "a.png", image)
    assert np.array_equal(read_image(path), image)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temp file left behind


def test_jpeg_and_webp_read_back_close(tmp_path):
    image = _gradient()
    for suffix in (".jpg", ".webp"):
        back = read_image(write_image(tmp_path / f"a{suffix}", image))
        assert back.shape == image.shape and np.abs(back.astype(int) - image).mean() < 6


def test_modes_gray_rgba_16bit_become_rgb8(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8), "L").save(tmp_path / "gray.png")
    assert np.all(read_image(tmp_path / "gray.png") == 77)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[:, :2, 3] = 255, 255  # red, left two columns opaque, rest transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 4].tolist() == [255, 255, 255]
    Image.fromarray(np.full((4, 5), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png").shape == (4, 5, 3)
    assert abs(int(read_image(tmp_path / "deep.png")[0, 0, 0]) - 127) <= 1


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = 255  # white left half
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # stored landscape, to be shown rotated 90° clockwise
    pil.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)
    assert out[2, 5].mean() > 200 and out[-3, 5].mean() < 50  # the white half is now on top


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path):
    good = write_image(tmp_path / "good.jpg", _gradient(64, 64))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name in ("cut.jpg", "junk.png", "missing.png"):
        with pytest.raises(UserError, match=name):
            read_image(tmp_path / name)
    assert [p.name for p in list_images(tmp_path)] == ["cut.jpg", "good.jpg", "junk.png"]
    with pytest.raises(UserError, match="suffix"):
        write_image(tmp_path / "x.txt", _gradient())


def test_clear_temporaries_removes_only_what_a_killed_atomic_write_left(tmp_path):
    from facekit.files import atomic_write_text, clear_temporaries

    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "kept")
    (tmp_path / ".checkpoint.k2j3h4.pt").write_text("half")  # what SIGKILL mid-save leaves
    (tmp_path / ".other.abc.pt").write_text("someone else's")
    assert clear_temporaries(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.pt", "checkpoint.pt"]
    assert target.read_text() == "kept" and oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_a_failed_write_names_the_file_asked_for_not_its_temporary(tmp_path):
    from facekit.files import atomic_write_text

    with pytest.raises(OSError) as err:
        atomic_write_text("/proc/distilswap-test.txt", "x")  # /proc takes no new files, even as root
    assert err.value.filename == "/proc/distilswap-test.txt"

    def fails(temp):
        raise OSError(28, "No space left on device", str(temp))

    with pytest.raises(OSError) as err:
        from facekit.files import atomic_write
        atomic_write(tmp_path / "out.bin", fails)
    assert err.value.filename == str(tmp_path / "out.bin") and not list(tmp_path.iterdir())
