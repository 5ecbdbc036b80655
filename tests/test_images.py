"""Images: every odd or broken file a user can drop, and preprocessing against timm's and
Hugging Face's pipelines computed independently."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_core import ImageError, ViTConfig, load_image, preprocess, preprocess_steps
from vit_core import images as images_mod


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    return Image.fromarray(arr.round().astype(np.uint8))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------
# load_image: broken and odd files


def test_empty_and_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is a text file renamed to .png\n" * 20)
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match="Cannot read"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt: str) -> None:
    buf = io.BytesIO()
    _noise(128, 96).save(buf, format=fmt)
    data = buf.getvalue()
    for cut in (len(data) // 2, len(data) - 100):
        with pytest.raises(ImageError, match="damaged or truncated"):
            load_image(data[:cut])


def test_decompression_bombs_are_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match="limit is 40 MP"):
        load_image(_png_header_only(8_000, 8_000))  # 64 MP: over our limit, under Pillow's
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header_only(100_000, 100_000))  # Pillow's own DecompressionBombError


def test_size_limit_on_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_mod, "MAX_BYTES", 100)
    with pytest.raises(ImageError, match="MB"):
        load_image(_png_bytes(_noise(64, 64)))


@pytest.mark.parametrize("size", [(1, 1), (10_000, 10), (10, 10_000)])
def test_tiny_and_extreme_aspect_images(size: tuple[int, int]) -> None:
    img = load_image(_png_bytes(Image.new("RGB", size, (200, 100, 50))))
    assert img.size == size and img.mode == "RGB"
    cfg = ViTConfig()
    x = preprocess(img, cfg)
    assert x.shape == (1, 3, 224, 224)
    # A flat colour stays flat whatever the resampling.
    expected = (torch.tensor([200, 100, 50]) / 255.0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(x[0].mean(dim=(1, 2)), expected.float(), atol=1e-5, rtol=0)
    assert x.std(dim=(2, 3)).max() < 1e-5


def test_sixteen_bit_grey_keeps_brightness() -> None:
    arr = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16)
    img16 = Image.fromarray(arr)
    assert img16.mode.startswith("I;16")
    out = np.asarray(load_image(_png_bytes(img16)))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255, 10]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))  # mode F in [0, 1]
    buf = io.BytesIO()
    f.save(buf, format="TIFF")
    assert np.asarray(load_image(buf.getvalue()))[0, :, 1].tolist() == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)  # pure red
    img = load_image(buf.getvalue())
    assert img.mode == "RGB"
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r > 230 and g < 25 and b < 25


def test_palette_with_transparency_and_la_are_composited_on_white() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # green is transparent
    for fmt in ("PNG", "GIF"):
        buf = io.BytesIO()
        pal.save(buf, format=fmt, transparency=1)
        out = np.asarray(load_image(buf.getvalue()))
        assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    la = Image.fromarray(np.array([[[100, 255], [100, 0], [100, 128]]], dtype=np.uint8), mode="LA")
    out = np.asarray(load_image(_png_bytes(la)))
    assert out[0, 0].tolist() == [100] * 3 and out[0, 1].tolist() == [255] * 3
    assert abs(int(out[0, 2, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(load_image(buf.getvalue()))
    assert out.shape == (8, 8, 3) and out[4, 4].tolist() == [255, 0, 0]


def test_exif_rotated_photo_comes_out_upright() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    img = load_image(buf.getvalue())
    assert img.size == (20, 40)  # portrait
    arr = np.asarray(img).astype(int)
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # top: red
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60  # bottom: blue


def test_sources_path_bytes_and_file_object(tmp_path: Path) -> None:
    data = _png_bytes(_noise(9, 7))
    (tmp_path / "a.png").write_bytes(data)
    ref = np.asarray(load_image(data))
    with open(tmp_path / "a.png", "rb") as f:
        f.read(3)  # a half-read upload is rewound
        assert np.array_equal(np.asarray(load_image(f)), ref)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "a.png"))), ref)
    assert np.array_equal(np.asarray(load_image(io.BytesIO(data))), ref)


# ----------------------------------------------------------------------------------------------
# preprocess against independent computations


def _timm_reference(img: Image.Image, cfg: ViTConfig) -> torch.Tensor:
    """timm's eval transform written out from torchvision's documented behaviour:
    Resize(floor(size / crop_pct)) then CenterCrop(size), ToTensor, Normalize."""
    H, W = cfg.img_size
    w, h = img.size
    filt = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[cfg.interpolation]
    target_h, target_w = math.floor(H / cfg.crop_pct), math.floor(W / cfg.crop_pct)
    if cfg.crop_mode == "squash":
        new_w, new_h = target_w, target_h
    elif target_h == target_w:
        short, long = min(w, h), max(w, h)
        new_short, new_long = target_h, int(target_h * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        r = min(h / target_h, w / target_w)
        new_w, new_h = round(w / r), round(h / r)
    resized = img.resize((new_w, new_h), filt)
    top = int(round((new_h - H) / 2.0))
    left = int(round((new_w - W) / 2.0))
    arr = np.asarray(resized.crop((left, top, left + W, top + H)), dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.array(cfg.mean, dtype=np.float32)) / np.array(cfg.std, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


PREP_CONFIGS = {
    "timm_default": dict(),
    "deit_bilinear_0875": dict(crop_pct=0.875, interpolation="bilinear"),
    "hf_squash": dict(crop_pct=1.0, crop_mode="squash", interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3),
    "squash_crop": dict(crop_pct=0.875, crop_mode="squash"),
    "non_square_input": dict(img_size=(32, 48), patch_size=8, crop_pct=0.9),
    "nearest": dict(interpolation="nearest", crop_pct=0.95),
}


@pytest.mark.parametrize("name", list(PREP_CONFIGS))
@pytest.mark.parametrize("size", [(300, 200), (200, 300), (57, 91), (224, 224), (1, 1)])
def test_preprocess_matches_timm_transform(name: str, size: tuple[int, int]) -> None:
    cfg = ViTConfig(**PREP_CONFIGS[name])
    img = _noise(*size, seed=sum(size))
    steps = preprocess_steps(img, cfg)
    H, W = cfg.img_size
    assert steps.tensor.shape == (1, 3, H, W) and steps.tensor.dtype == torch.float32
    assert steps.resized.size == (W, H)
    torch.testing.assert_close(steps.tensor, _timm_reference(img, cfg), atol=1e-6, rtol=0)
    left, top, right, bottom = steps.crop_box  # the crop, in original pixels, is centred
    px_w, px_h = (right - left) / W, (bottom - top) / H  # one resized pixel, in original pixels
    assert left == pytest.approx(size[0] - right, abs=px_w + 1e-6)
    assert top == pytest.approx(size[1] - bottom, abs=px_h + 1e-6)


def test_identity_when_the_image_already_fits() -> None:
    img = _noise(224, 224, seed=3)
    cfg = ViTConfig(crop_pct=1.0)
    x = preprocess(img, cfg)
    expected = (torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0) - torch.tensor(cfg.mean)) / torch.tensor(
        cfg.std
    )
    torch.testing.assert_close(x[0], expected.permute(2, 0, 1), atol=1e-6, rtol=0)


def test_huge_intermediate_is_avoided_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the intermediate-size limit the crop is resampled straight from the original; on a
    smooth image that agrees with the two-step transform to a grey level or two."""
    img = _smooth(300, 200)
    cfg = ViTConfig()
    exact = preprocess(img, cfg)
    monkeypatch.setattr(images_mod, "_MAX_INTERMEDIATE_PIXELS", 10)
    direct = preprocess(img, cfg)
    assert (direct - exact).abs().max() < 2.5 / 255 / min(cfg.std)


def test_preprocess_matches_transformers_vit_image_processor() -> None:
    transformers = pytest.importorskip("transformers")
    processor_cls = getattr(transformers, "ViTImageProcessorPil", None)
    if processor_cls is None:
        pytest.skip("this transformers has no PIL ViT image processor")
    img = _noise(300, 200, seed=5)
    expected = processor_cls()(images=img, return_tensors="pt")["pixel_values"]
    cfg = ViTConfig(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
    torch.testing.assert_close(preprocess(img, cfg), expected, atol=1e-6, rtol=0)


def test_grey_models_get_one_channel() -> None:
    cfg = ViTConfig(img_size=32, patch_size=8, in_chans=1)
    x = preprocess(_noise(50, 40), cfg)
    assert x.shape == (1, 1, 32, 32)
