"""Server limits: defaults, the classroom switch and per-variable overrides."""

import pytest

from vit_core.limits import CLASSROOM, ENV, Limits, current_limits, is_public, trace_bytes


def test_defaults_without_environment():
    assert current_limits({}) == Limits()
    assert not is_public({})


def test_public_switch_applies_every_classroom_default():
    lim = current_limits({"VIT_EXPLORER_PUBLIC": "1"})
    assert lim.public
    for name, value in CLASSROOM.items():
        assert getattr(lim, name) == value, name
    # every classroom cap is at least as strict as the personal default
    base = Limits()
    for name, value in CLASSROOM.items():
        if name in ("public", "max_run_seconds", "paused_release_s"):
            continue  # 0 means "none" for these two at home
        assert value <= getattr(base, name), name
    assert lim.max_run_seconds > 0 and lim.paused_release_s > 0


def test_variables_override_with_units():
    lim = current_limits(
        {"VIT_EXPLORER_PUBLIC": "yes", "VIT_EXPLORER_MAX_IMAGE_MB": "2", "VIT_EXPLORER_MAX_EPOCHS": "7.5"}
    )
    assert lim.public and lim.max_image_bytes == 2 * 1024 * 1024 and lim.max_epochs == 7.5
    assert isinstance(lim.max_image_bytes, int)
    assert set(ENV) <= {f for f in Limits.__dataclass_fields__}


@pytest.mark.parametrize("raw", ["lots", "-1", "nan"])
def test_a_bad_value_names_the_variable(raw):
    with pytest.raises(ValueError, match="VIT_EXPLORER_MAX_TOKENS"):
        current_limits({"VIT_EXPLORER_MAX_TOKENS": raw})


def test_trace_bytes_matches_the_attention_tensor():
    import torch

    L, h, N = 3, 2, 17
    assert trace_bytes(L, h, N) == torch.zeros(1, L, h, N, N).element_size() * L * h * N * N


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG header with a 4-byte stand-in for the pixel data (so it cannot decode)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\0\0\0\0") + chunk(b"IEND", b"")


def test_image_pixel_limit_is_read_from_the_header_before_decoding(monkeypatch):
    from vit_core import ImageError, load_image

    data = _png(1200, 1000)  # 1.2 MP, a few KB compressed
    assert load_image(data).size == (1200, 1000)
    monkeypatch.setenv("VIT_EXPLORER_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageError, match="1200x1000 pixels.*limit is 1 MP"):
        load_image(data)
    # a header that claims 20000 x 20000 with no pixel data behind it: refused by size, never decoded
    truncated = _png_header(20000, 20000)
    with pytest.raises(ImageError, match="limit is 1 MP"):
        load_image(truncated)


def test_model_cost_refuses_too_many_tokens_and_too_much_attention():
    from vit_core.config import ViTConfig
    from vit_core.limits import ModelTooLargeError, check_model_cost

    lim = Limits(max_tokens=200, max_trace_bytes=trace_bytes(12, 12, 197))
    check_model_cost(ViTConfig(), lim)  # ViT-B/16 at 224: 197 tokens, exactly at the trace cap
    with pytest.raises(ModelTooLargeError, match="1,025 tokens per image .*allows 200"):
        check_model_cost(ViTConfig(img_size=(32, 32), patch_size=1, depth=1, num_heads=1), lim)
    with pytest.raises(ModelTooLargeError, match="attention maps of one image"):
        check_model_cost(ViTConfig(depth=13), lim)  # one more layer than the cap pays for
