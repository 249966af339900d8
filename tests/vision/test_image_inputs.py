"""Bad inputs give one clear line and no crash."""

from __future__ import annotations



import cv2
import numpy as np
import pytest
from PIL import Image

from mirage_desktop.errors import InputImageError, ModelError
from mirage_desktop.models.runtime import create_session
from mirage_desktop.vision.image_io import load_image


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400
    return text


def test_corrupt_jpeg(tmp_path, astronaut):
    ok, enc = cv2.imencode(".jpg", astronaut)
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(enc.tobytes()[200:260]) + b"garbage" * 10)
    with pytest.raises(InputImageError) as e:
        load_image(p)
    assert "not a readable image" in _one_line(e.value) and "JPEG or PNG" in str(e.value)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        load_image(p)
    with pytest.raises(InputImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputImageError, match="folder"):
        load_image(tmp_path)


def test_grayscale_and_16bit_png(tmp_path, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    img = load_image(tmp_path / "g.png")
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert np.array_equal(img[:, :, 0], gray)
    deep = astronaut.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    img16 = load_image(tmp_path / "d.png")
    assert img16.dtype == np.uint8 and np.abs(img16.astype(int) - astronaut).max() <= 1


def test_cmyk_jpeg(tmp_path, astronaut):
    rgb = cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    img = load_image(tmp_path / "c.jpg")
    assert img.shape == (512, 512, 3)
    # colours survive: the orange suit stays orange-ish (R > B) in BGR order
    suit = img[400:450, 100:150].reshape(-1, 3).mean(0)
    assert suit[2] > suit[0] + 40


def test_exif_rotated_photo_is_upright(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = 255  # white band on the left
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    pil.save(tmp_path / "r.jpg", exif=exif.tobytes())
    out = load_image(tmp_path / "r.jpg")
    assert out.shape[:2] == (200, 100)
    assert out[:40].mean() > 200 and out[-40:].mean() < 50  # the band is now on top


def test_huge_image_is_scaled_down(tmp_path):
    big = np.zeros((8000, 8000, 3), np.uint8)
    big[::100] = 255
    ok, enc = cv2.imencode(".png", big)
    p = tmp_path / "big.png"
    p.write_bytes(enc.tobytes())
    out = load_image(p)
    assert max(out.shape[:2]) == 2048


def test_truncated_model_is_refused_with_the_fix(tmp_path, model_factory):
    paths = model_factory(None, faces=[])
    data = paths["inswapper_128"].read_bytes()
    bad = tmp_path / "inswapper_128.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError) as e:
        create_session(bad)
    msg = _one_line(e.value)
    assert "corrupt or truncated" in msg and "mirage models download --force" in msg


def test_photo_with_no_face(no_face_image):
    from mirage_desktop.vision.analysis import FaceAnalyzer
    from mirage_desktop.vision.identity import IdentityBuilder

    analyzer = FaceAnalyzer.load()  # no models downloaded: the built-in detector
    assert analyzer.status.detector == "opencv-haar"
    with pytest.raises(InputImageError) as e:
        IdentityBuilder(analyzer).build([no_face_image])
    assert "no face found" in _one_line(e.value)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, model_factory, astronaut):
    from mirage_desktop.cli import main

    paths = model_factory(astronaut)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), astronaut)
    rc = main(["swap", "--source", str(bad), "--target", str(good), "-o", str(tmp_path / "o.png"),
               "--confirm-rights", "--model", f"det_10g={paths['det_10g']}",
               "--model", f"w600k_r50={paths['w600k_r50']}", "--model", f"inswapper_128_fp16={paths['inswapper_128']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("mirage: error:") and "not a readable image" in err[-1]
    assert not (tmp_path / "o.png").exists()


# ---- inputs bounded before they cost memory ---------------------------------------------------------

def _png_header(w: int, h: int) -> bytes:
    """A PNG that *declares* w x h: the signature, a real IHDR and the start of an image stream."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + \
        chunk(b"IEND", b"")


def _jpeg_header(w: int, h: int) -> bytes:
    """A baseline JPEG whose frame header declares w x h (taken from a real JPEG, size patched)."""
    import struct

    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(enc.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@pytest.mark.parametrize("make,ext", [(_png_header, ".png"), (_jpeg_header, ".jpg")])
@pytest.mark.parametrize("w,h", [(20000, 20000), (60000, 2000), (65535, 65535)])
def test_an_over_limit_image_is_refused_from_its_header(tmp_path, monkeypatch, make, ext, w, h):
    p = tmp_path / f"big{ext}"
    p.write_bytes(make(w, h))
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with pytest.raises(InputImageError) as e:
        load_image(p)
    assert f"{w}x{h}" in str(e.value) and "megapixels" in str(e.value) and "scale it down" in str(e.value)
    assert decoded == []  # refused before a single pixel was decoded


def test_opencv_guards_the_formats_the_header_check_does_not_read(tmp_path):
    """OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS only when cv2 is first imported: the package sets it
    before that, so in a fresh process that imports Mirage, OpenCV itself refuses to decode more than
    100 megapixels even when called directly (a decoder Mirage's header check does not know)."""
    import subprocess
    import sys

    p = tmp_path / "big.png"
    ok, enc = cv2.imencode(".png", np.zeros((10001, 10001), np.uint8))  # 100.02 MP, a valid image
    p.write_bytes(enc.tobytes())
    code = ("import sys, numpy as np; import mirage_desktop.cli; import cv2; "
            "buf = np.fromfile(sys.argv[1], np.uint8)\n"
            "try:\n    r = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)\nexcept cv2.error:\n    r = None\n"
            "print('refused' if r is None else 'decoded')")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "refused", r.stderr
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(1 << 30)  # OpenCV's default: the same file decodes
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "decoded", r.stderr


def test_fill_bytes_before_a_jpeg_marker_do_not_hide_its_size(tmp_path):
    data = bytearray(_jpeg_header(15000, 15000))
    i = data.index(b"\xff\xc0")
    data[i:i] = b"\xff\xff"  # legal padding before the frame marker
    p = tmp_path / "padded.jpg"
    p.write_bytes(bytes(data))
    with pytest.raises(InputImageError, match="15000x15000"):
        load_image(p)


def test_an_image_just_under_the_limit_is_read(tmp_path):
    from mirage_desktop.vision import image_io

    p = tmp_path / "ok.png"
    cv2.imwrite(str(p), np.full((3000, 4000, 3), 90, np.uint8))  # 12 MP: a phone photo
    assert load_image(p).shape == (1536, 2048, 3)
    assert image_io.image_size_from_header(p.read_bytes()) == (4000, 3000)


def test_a_huge_file_is_not_read_into_memory(tmp_path, monkeypatch):
    from mirage_desktop.vision import image_io

    monkeypatch.setattr(image_io, "MAX_FILE_BYTES", 1024)
    p = tmp_path / "big.jpg"
    p.write_bytes(_jpeg_header(100, 100) + b"\0" * 4096)
    with pytest.raises(InputImageError, match="too big for a photo"):
        load_image(p)


def test_the_cli_refuses_an_over_limit_source_in_one_line(tmp_path, capsys):
    from mirage_desktop.cli import main

    big = tmp_path / "big.png"
    big.write_bytes(_png_header(20000, 20000))
    rc = main(["swap", "--source", str(big), "--target", str(big), "-o", str(tmp_path / "o.png"),
               "--confirm-rights"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mirage: error")]
    assert rc == 2 and len(lines) == 1 and "20000x20000" in lines[0]
    rc = main(["run", "--input", str(big), "--output", "null", "--frames", "1"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mirage: error")]
    assert rc == 2 and len(lines) == 1 and "20000x20000" in lines[0]
