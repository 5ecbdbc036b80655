"""Which image the app shows: bundled samples, an upload, or a camera photo (sidebar picker).

The most recent choice wins. Clearing an upload (or the camera photo) goes back to the
previous choice. A file that is not a usable image leaves the current image in place and
shows a short message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from vit_core import ImageError, load_image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "assets" / "samples"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
DEFAULT_SAMPLE = "CIFAR-10: cat"
MAX_IMAGE_MB = 20  # per image (the server-wide cap in .streamlit/config.toml is larger, for datasets)

# session_state keys
_STACK = "image_stack"  # source -> ImageChoice, most recent last
_ERROR = "image_error"
SAMPLE_KEY = "sample_image"
UPLOAD_KEY = "image_upload"
CAMERA_ON_KEY = "camera_on"
CAMERA_KEY = "camera_photo"


@dataclass(frozen=True)
class ImageChoice:
    """An image the user chose: its bytes and what identifies it in caches."""

    name: str  # for captions: "CIFAR-10: cat", "upload: holiday.jpg"
    data: bytes  # the file as uploaded / stored
    key: str  # sha1 of the bytes: the cache key of everything computed from this image
    source: str  # "sample", "upload" or "camera"

    def decoded(self) -> Image.Image:
        """The image as `load_image` reads it (upright RGB), decoded once per content.

        Shared by every caller (the uploader's check, the forward pass): read it, never modify it.

        Raises:
            ImageError: the bytes are not an image `load_image` accepts.
        """
        return _decode(self.key, self.data)


def image_choice(name: str, data: bytes, source: str) -> ImageChoice:
    return ImageChoice(name, data, hashlib.sha1(data).hexdigest(), source)


# An upload is checked when it arrives and fed to the model in the same run: one decode
# serves both. Few entries, short-lived: a 40 MP photo is 120 MB decoded.
@st.cache_resource(max_entries=4, ttl=120, show_spinner=False)
def _decode(key: str, _data: bytes) -> Image.Image:
    return load_image(_data)


def sample_images() -> dict[str, Path]:
    """Bundled samples: menu label -> file, CIFAR-10 first."""
    out: dict[str, Path] = {}
    for folder, prefix in (("cifar10", "CIFAR-10"), ("photos", "Photo")):
        for p in sorted((SAMPLES_DIR / folder).glob("*")):
            if p.suffix.lower().lstrip(".") in UPLOAD_TYPES:
                out[f"{prefix}: {p.stem.replace('_', ' ')}"] = p
    return out


def _push(choice: ImageChoice) -> None:
    stack: dict = st.session_state.setdefault(_STACK, {})
    stack.pop(choice.source, None)
    stack[choice.source] = choice


def _drop(source: str) -> None:
    st.session_state.setdefault(_STACK, {}).pop(source, None)


def _accept(name: str, data: bytes, source: str) -> None:
    """Use an uploaded or photographed file if it is an image we can read."""
    choice = image_choice(name, data, source)
    try:
        choice.decoded()
    except ImageError as e:
        st.session_state[_ERROR] = (
            f"{name}: {e} Try another file (png, jpg, webp, bmp, gif or tiff); the previous image is still shown."
        )
        return
    _push(choice)


def _on_sample() -> None:
    label = st.session_state.get(SAMPLE_KEY)
    path = sample_images().get(label)
    if path is not None:
        _push(image_choice(label, path.read_bytes(), "sample"))


def _on_upload() -> None:
    up = st.session_state.get(UPLOAD_KEY)
    if up is None:
        _drop("upload")
    else:
        _accept(f"upload: {up.name}", up.getvalue(), "upload")


def _on_camera() -> None:
    photo = st.session_state.get(CAMERA_KEY)
    if photo is None:
        _drop("camera")
    else:
        _accept("camera photo", photo.getvalue(), "camera")


def _on_camera_toggle() -> None:
    if not st.session_state.get(CAMERA_ON_KEY):
        _drop("camera")


def current_image() -> ImageChoice:
    """The image in use now (the default sample before any choice)."""
    stack: dict = st.session_state.get(_STACK) or {}
    if not stack:
        samples = sample_images()
        label = DEFAULT_SAMPLE if DEFAULT_SAMPLE in samples else next(iter(samples))
        _push(image_choice(label, samples[label].read_bytes(), "sample"))
        stack = st.session_state[_STACK]
    return next(reversed(stack.values()))


def image_picker() -> ImageChoice:
    """Draw the image picker in the sidebar; return the current image."""
    samples = sample_images()
    sb = st.sidebar
    if st.session_state.get(SAMPLE_KEY) not in samples:
        st.session_state[SAMPLE_KEY] = DEFAULT_SAMPLE if DEFAULT_SAMPLE in samples else next(iter(samples))
    sb.selectbox("Sample image", list(samples), key=SAMPLE_KEY, on_change=_on_sample)
    sb.file_uploader(
        "…or upload an image", type=UPLOAD_TYPES, key=UPLOAD_KEY, on_change=_on_upload, max_upload_size=MAX_IMAGE_MB
    )
    if sb.toggle("…or take a photo", key=CAMERA_ON_KEY, on_change=_on_camera_toggle):
        sb.camera_input("Camera", key=CAMERA_KEY, on_change=_on_camera)
    error = st.session_state.pop(_ERROR, None)
    if error:
        sb.error(error)
    return current_image()
