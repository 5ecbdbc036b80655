"""Step 1 of a new run: where the images come from (a path, the official download, an upload)."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from vit_core.download_job import DownloadJob
from vit_core.errors import DataError, VitCoreError
from vit_core.fetch import CACHE_ENV, CIFAR10_ARCHIVE, CIFAR10_DOWNLOAD_MB, CIFAR10_URL, default_cache_dir
from vit_core.limits import current_limits
from vit_core.sources import ACCEPTED, DataInfo, DataSource, cifar10_cached, inspect_source, missing_data_help

from .lease import DOWNLOAD_KEY, hold, session_id
from .uploads import SessionUploads

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_MB = 200
_UPLOAD_PATH = "_train_upload_path"
_UPLOAD_ERROR = "_train_upload_error"
_UPLOADS = "_train_uploads"  # the session's SessionUploads
SOURCES = {
    "path": "A folder or archive on this machine",
    "download": f"Download the official CIFAR-10 ({CIFAR10_DOWNLOAD_MB} MB)",
    "upload": "Upload an archive",
}
FOUND_LABEL = "CIFAR-10 already on this server"  # the "download" option once a copy is in the cache


_FOUND_AT_START = "train_cifar_found_at_start"  # the label is fixed per session: a radio whose label changes breaks


def _source_label(key: str) -> str:
    found = st.session_state.get(_FOUND_AT_START)
    if found is None:
        found = st.session_state[_FOUND_AT_START] = cifar10_cached() is not None
    if key == "download" and found:
        return FOUND_LABEL
    return SOURCES[key]


def suggested_path() -> str | None:
    """The folder the path box starts with: $VIT_EXPLORER_DATA, else ./data/cifar10, if it exists."""
    env = os.environ.get(CACHE_ENV)
    if env and Path(env).expanduser().exists():
        return env
    local = ROOT / "data" / "cifar10"
    return str(local.relative_to(ROOT)) if local.is_dir() else None


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def _inspect(kind: str, path: str | None, found: str | None, mtime: float) -> DataInfo:
    """`inspect_source`, cached for a few seconds per source and what is on disk (`found`, `mtime`)."""
    return inspect_source(DataSource(kind, path))


def _inspect_source(source: DataSource) -> DataInfo:
    found = cifar10_cached() if source.kind == "cache" else (Path(source.path) if source.path else None)
    try:
        mtime = found.stat().st_mtime if found is not None else 0.0
    except OSError:
        mtime = 0.0
    return _inspect(source.kind, source.path, str(found), mtime)


def data_picker() -> tuple[DataSource | None, DataInfo | None]:
    """Where the images come from; returns the source and what it holds, or (None, None)."""
    suggested = suggested_path()
    # CIFAR-10 this server already has (any earlier session's unpacked copy) comes first.
    st.session_state.setdefault("train_source", "download" if cifar10_cached() is not None else "path")
    options = [k for k in SOURCES if not (k == "path" and current_limits().public)]  # no server paths in class
    if st.session_state["train_source"] not in options:
        st.session_state["train_source"] = options[0]
    labels = {k: _source_label(k) for k in options}  # built in this run: the radio and its value agree
    choice = st.radio(
        "Where the images come from", options, format_func=labels.__getitem__, key="train_source", horizontal=True
    )
    st.caption(f"The Train page takes {ACCEPTED}.")
    source: DataSource | None = None
    if choice == "path":
        st.session_state.setdefault("train_path", suggested or "")
        raw = st.text_input(
            "Path of a CIFAR-10 archive (`cifar-10-python.tar.gz` or the JPEG `cifar10_jpeg.tar.gz`), its "
            "unpacked folder, or an image folder (`train/<class>/*.jpg` and `test/<class>/*.jpg`)",
            key="train_path",
            placeholder="data/cifar10",
        ).strip()
        if raw:
            p = Path(raw).expanduser()
            source = DataSource("path", str(p if p.is_absolute() else ROOT / p))
        elif cifar10_cached() is None:
            st.info(missing_data_help())
    elif choice == "download":
        if cifar10_cached() is not None:
            source = DataSource("cache")
        else:
            _download_box()
    else:
        source = _upload_box()
    if source is None:
        return None, None
    try:
        info = _inspect_source(source)
    except DataError as e:
        st.error(str(e))
        if source.kind == "path" and cifar10_cached() is None:
            st.info(missing_data_help())
        return None, None
    st.success(
        f"{info.description}: {info.train_size:,} training and {info.test_size:,} test images, "
        f"{len(info.class_names)} classes, {info.image_size}x{info.image_size} pixels."
    )
    return source, info


def _start_download() -> None:
    job = DownloadJob()
    job.start()
    st.session_state[DOWNLOAD_KEY] = job
    hold(job, f"download:{id(job)}")


def _download_box() -> None:
    cache = default_cache_dir()
    st.markdown(
        f"The official archive `{CIFAR10_ARCHIVE}` ({CIFAR10_URL}), about **{CIFAR10_DOWNLOAD_MB} MB**, is "
        f"saved in `{cache}` (set `{CACHE_ENV}` to use another folder) and unpacked there. Nothing is "
        "downloaded until you click."
    )
    job: DownloadJob | None = st.session_state.get(DOWNLOAD_KEY)
    status = job.view()[0] if job is not None else "new"
    if status in ("new", "failed", "cancelled"):
        st.button(f"Download CIFAR-10 ({CIFAR10_DOWNLOAD_MB} MB)", key="train_download_go", on_click=_start_download)
        if job is not None:
            st.error(job.view()[3])
            if status == "failed":
                st.info(missing_data_help())
        return

    @st.fragment(run_every=0.5 if job.alive else None)
    def _progress() -> None:
        status, done, total, msg = job.view()
        if status in ("done", "failed", "cancelled"):
            st.rerun()  # the whole page: the data is there now (or the error is shown)
        frac = min(1.0, done / total) if total else 0.0
        what = "Unpacking" if status == "unpacking" else f"Downloading: {done / 2**20:.0f} / {total / 2**20:.0f} MB"
        st.progress(frac, text=what)
        st.button("Cancel", key="train_download_cancel", on_click=job.cancel)

    _progress()


def _session_uploads() -> SessionUploads:
    uploads = st.session_state.get(_UPLOADS)
    if uploads is None:
        uploads = st.session_state[_UPLOADS] = SessionUploads(session_id() or "no-session")
    hold(uploads, f"uploads:{uploads.session}")  # removed when the session ends
    return uploads


def _on_upload() -> None:
    up = st.session_state.get("train_upload")
    st.session_state.pop(_UPLOAD_ERROR, None)
    if up is None:
        st.session_state.pop(_UPLOAD_PATH, None)
        return
    try:
        path = _session_uploads().save(up.name, up.getvalue())
    except VitCoreError as e:
        st.session_state.pop(_UPLOAD_PATH, None)
        st.session_state[_UPLOAD_ERROR] = str(e)
        return
    st.session_state[_UPLOAD_PATH] = str(path)


def upload_limit_mb() -> int:
    """The upload widget's size cap: the smallest of the page's, the server's and the session quota."""
    quota_mb = current_limits().upload_quota_session_bytes // 2**20
    return max(1, min(UPLOAD_MB, int(st.get_option("server.maxUploadSize")), quota_mb))


def _upload_box() -> DataSource | None:
    limit = upload_limit_mb()
    st.file_uploader(
        f"The official `{CIFAR10_ARCHIVE}`, the JPEG `cifar10_jpeg.tar.gz`, or a .tar.gz of an image folder "
        "(`train/<class>/*.jpg`, `test/<class>/*.jpg`)",
        type=["gz", "tgz", "tar"],
        key="train_upload",
        on_change=_on_upload,
        max_upload_size=limit,
    )
    if limit < CIFAR10_DOWNLOAD_MB:
        st.caption(
            f"This server accepts uploads up to {limit} MB: the official archive is {CIFAR10_DOWNLOAD_MB} MB, so put "
            "it on the server and use the path option instead (the 20 MB JPEG archive fits)."
        )
    err = st.session_state.get(_UPLOAD_ERROR)
    if err:
        st.error(err)
    path = st.session_state.get(_UPLOAD_PATH)
    return DataSource("path", path) if path else None
