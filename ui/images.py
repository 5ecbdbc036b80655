"""Which image the app shows: bundled samples, an upload, or a camera photo (sidebar picker).

The most recent choice wins, and the sidebar says which one is live ("Now showing: ...").
Choosing a sample goes back to the samples: it empties the uploader and turns the camera
off, so no widget keeps showing a file that is no longer in use; while an upload or a photo
is live the sample menu shows no sample, so any sample (the cat too) is a change. Clearing
an upload (or the camera photo) goes back to the previous choice. A file that is not a
usable image is refused with a message naming the file and the image still shown.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from vit_core import ImageError, load_image
from vit_core.limits import current_limits, fmt_bytes

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "assets" / "samples"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
DEFAULT_SAMPLE = "CIFAR-10: cat"
MAX_IMAGE_MB = 20  # per image (the server-wide cap in .streamlit/config.toml is larger, for datasets)

# session_state keys
_STACK = "image_stack"  # source -> ImageChoice, most recent last
_ERROR = "image_error"
_UPLOADS = "image_upload_round"  # bumped to empty the uploader: its widget key changes
SAMPLE_KEY = "sample_image"
UPLOAD_KEY = "image_upload"  # the uploader's key until it is first emptied (then image_upload_1, ...)
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


def sample_slug(label: str) -> str:
    """A sample's name in a link: "CIFAR-10: cat" -> "cifar-10-cat"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _push(choice: ImageChoice) -> None:
    stack: dict = st.session_state.setdefault(_STACK, {})
    stack.pop(choice.source, None)
    stack[choice.source] = choice


def _drop(source: str) -> None:
    st.session_state.setdefault(_STACK, {}).pop(source, None)


def upload_key() -> str:
    """The uploader's widget key now (a new key is an empty uploader)."""
    n = st.session_state.get(_UPLOADS, 0)
    return UPLOAD_KEY if n == 0 else f"{UPLOAD_KEY}_{n}"


def _empty_uploader() -> None:
    st.session_state[_UPLOADS] = st.session_state.get(_UPLOADS, 0) + 1


def _plain_reason(e: ImageError) -> str:
    """The library's reason in a user's words (no library names)."""
    text = str(e)
    if "Pillow" in text or "damaged" in text:
        return "it is not a picture this app can open (png, jpg, webp, bmp, gif or tiff), or it is damaged."
    return text[0].lower() + text[1:] if text else "it could not be read."


def _accept(filename: str, name: str, data: bytes, source: str) -> None:
    """Use an uploaded or photographed file if it is an image we can read; else say why, by its name."""
    limit = current_limits().max_image_bytes  # the widget's limit is the browser's; this one holds on the server
    if len(data) > limit:
        if source == "upload":
            _empty_uploader()
        st.session_state[_ERROR] = (
            filename,
            f"it is {fmt_bytes(len(data))}; this server takes images up to {fmt_bytes(limit)}.",
        )
        return
    choice = image_choice(name, data, source)
    try:
        choice.decoded()
    except ImageError as e:
        if source == "upload":
            _empty_uploader()  # the uploader must not keep showing a file that is not in use
        st.session_state[_ERROR] = (filename, _plain_reason(e))
        return
    _push(choice)


def choose_sample(label: str) -> bool:
    """Show the sample `label` (dropping any upload or camera photo); False if there is no such sample."""
    path = sample_images().get(label)
    if path is None:
        return False
    _push(image_choice(label, path.read_bytes(), "sample"))
    for source in ("upload", "camera"):
        _drop(source)
    if st.session_state.get(upload_key()) is not None:
        _empty_uploader()
    st.session_state[CAMERA_ON_KEY] = False
    return True


def choose_sample_by_slug(slug: str) -> bool:
    """`choose_sample` for a sample named in a link (`sample_slug`)."""
    for label in sample_images():
        if sample_slug(label) == slug:
            return choose_sample(label)
    return False


def _on_sample() -> None:
    label = st.session_state.get(SAMPLE_KEY)
    if label is not None:
        choose_sample(label)


def _on_upload(key: str) -> None:
    up = st.session_state.get(key)
    if up is None:
        _drop("upload")
    else:
        _accept(up.name, f"upload: {up.name}", up.getvalue(), "upload")


def _on_camera() -> None:
    photo = st.session_state.get(CAMERA_KEY)
    if photo is None:
        _drop("camera")
    else:
        _accept("The camera photo", "camera photo", photo.getvalue(), "camera")


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
    """Draw the image picker in the sidebar; return the current image.

    A refused file's message is drawn by `refused_upload_message` (where the user is looking).
    """
    samples = sample_images()
    sb = st.sidebar
    image = current_image()
    sb.markdown(f"Now showing: **{image.name}**")
    # the menu shows the live sample, or none while an upload or photo is live
    st.session_state[SAMPLE_KEY] = image.name if image.source == "sample" and image.name in samples else None
    sb.selectbox(
        "Sample image",
        list(samples),
        key=SAMPLE_KEY,
        on_change=_on_sample,
        index=None,
        placeholder="Back to a sample…",
    )
    key = upload_key()
    sb.file_uploader(
        "…or upload an image",
        type=UPLOAD_TYPES,
        key=key,
        on_change=_on_upload,
        args=(key,),
        max_upload_size=max(1, current_limits().max_image_bytes // 2**20),
    )
    if sb.toggle("…or take a photo", key=CAMERA_ON_KEY, on_change=_on_camera_toggle):
        sb.camera_input("Camera", key=CAMERA_KEY, on_change=_on_camera)
    return current_image()


def refused_upload_message() -> str | None:
    """The message about a file just refused (once), naming it and the image still shown."""
    refused = st.session_state.pop(_ERROR, None)
    if not refused:
        return None
    filename, reason = refused
    return f"{filename} was not used: {reason} Now showing: {current_image().name}."
