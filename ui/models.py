"""Which model the app shows: the sources, the sidebar picker, and the session's own models.

Contract with the Train page: `register_session_model(name, model)` puts a model the user
trained into this session's picker and selects it (from the next rerun of the sidebar;
call `st.rerun()` after it if the page should switch at once). Call it from the script
thread (a page body or a widget callback), not from a background training thread.

Model keys (the picker's option values):
    "bundled"            assets/vit_cifar10.safetensors
    "untrained"          a randomly initialised CIFAR-sized ViT (clearly labelled)
    "file:<path>"        a checkpoint file (under runs/, named by path, or uploaded); what its
                         weights cannot tell (a student's ViT: heads, image size, ...) is
                         answered in the sidebar and kept per path in session state
    "session:<name>"     a model registered by `register_session_model`
    "pretrained:<name>"  an entry of the pretrained catalogue (downloaded on request only)

What a browser user can make the server do (issue 16, `vit_core.limits`): an uploaded checkpoint
is checked in memory (size, format, and the model's cost when its config is in the file) before
it is written, then kept in this session's own folder of the upload store, removed when the
session ends, after the upload time limit, or at once if it does not load. A typed path is
checked by `stat` before anything opens it (a pipe never blocks), may not lead into the upload
store or the run folders (other sessions' files), and every refusal reads the same, so the box
cannot tell whether a server path exists. With `VIT_EXPLORER_PUBLIC=1` (classroom mode) there is
no upload and no path box; `VIT_EXPLORER_MODELS` names a folder whose checkpoints are offered.

Every model the picker returns is on the server's inference device (`VIT_EXPLORER_DEVICE`, see
`vit_core.devices`: a GPU when there is one, else the CPU), moved there once when it is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from vit_core import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CheckpointError,
    VisionTransformer,
    ViTConfig,
    describe,
    load_checkpoint,
)
from vit_core.checkpoints import WEIGHT_FILES, check_checkpoint_bytes
from vit_core.devices import server_device
from vit_core.families import FAMILIES, SAVE_HELP, AnswerNeededError, Question
from vit_core.fileio import remove_quietly
from vit_core.limits import current_limits, is_public
from vit_core.pretrained import download_pretrained, get_pretrained, is_downloaded, list_pretrained, load_pretrained
from vit_core.runs import runs_root
from vit_core.uploads import UploadError, UploadStore, check_regular_file

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PATH = ROOT / "assets" / "vit_cifar10.safetensors"
RUNS_DIR = ROOT / "runs"
UPLOAD_DIR = Path(tempfile.gettempdir()) / "vit-explorer-uploads"  # the upload store (the Train page's too)
MODELS_ENV = "VIT_EXPLORER_MODELS"  # a folder of checkpoints offered to everyone (the only paths in classroom mode)
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
NO_CHECKPOINT = (
    "No checkpoint this app can load at that path (it may not exist, not be a regular file, be too large, "
    "or be outside the folders this server allows). Check the path, or pick another model."
)

# session_state keys
CHOICE = "model_choice"  # the selected model key (see the module docstring): the source of truth
MODEL_KEY = "model_key"  # the picker widget; copied from CHOICE before it is drawn, so that a
# page switch that drops widget state cannot lose the selection
_PENDING = "_model_key_pending"  # a selection to apply before the picker is drawn next
_LAST_GOOD = "_model_key_last_good"  # the last model that loaded; used when a new one fails
_SESSION_MODELS = "session_models"  # name -> SessionModel
_EXTRA = "extra_model_keys"  # keys added this session (uploads, paths, downloads) -> label
_ERROR = "model_error"  # a short message about the last failed load, shown once
_ANSWERS = "model_answers"  # path -> {load_checkpoint keyword: value}: what a file's weights cannot tell
_QUESTION = "model_question"  # a file waiting for answers: {"key", "label", "family", "questions"}


@dataclass
class SessionModel:
    """A model that lives only in this browser session (trained on the Train page)."""

    model: VisionTransformer
    model_id: str  # unique per registration, so caches never mix two models of one name


@dataclass
class LoadedModel:
    """The model the pages show, with what identifies it in caches."""

    model: VisionTransformer
    model_id: str  # cache key: changes whenever the weights may have changed
    key: str  # the picker key it came from
    label: str  # a human name for the picker and the page captions
    untrained: bool = False  # random weights: predictions mean nothing


def register_session_model(name: str, model: VisionTransformer) -> None:
    """Add a model trained in this session to the picker and select it.

    Registering a second model under the same name replaces the first. The selection is
    applied when the sidebar is next drawn (the next rerun).
    """
    # duck-typed: after Streamlit reloads vit_core (a source file changed), a model built
    # before the reload is not an instance of the reloaded class, but is still a ViT
    if not (hasattr(model, "trace") and hasattr(model, "cfg") and hasattr(model, "class_names")):
        raise TypeError(f"register_session_model needs a VisionTransformer, not {type(model).__name__}")
    models = st.session_state.setdefault(_SESSION_MODELS, {})
    models[str(name)] = SessionModel(on_server_device(model.eval()), f"session:{uuid.uuid4().hex}")
    st.session_state[_PENDING] = f"session:{name}"


def session_models() -> dict[str, VisionTransformer]:
    """The models registered in this session, by name."""
    return {name: sm.model for name, sm in st.session_state.get(_SESSION_MODELS, {}).items()}


# ---- loading (cached once per process; the weights are shared read-only by sessions) ----


def on_server_device(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, moved (in place) to the device this server runs models on (`server_device()`)."""
    return model.to(server_device().device)


@st.cache_resource(max_entries=6, show_spinner="Loading the model...")
def _load_file(path: str, mtime: float, size: int, answers: str = "{}") -> VisionTransformer:
    """A checkpoint file; `mtime` and `size` are in the key so a rewritten file reloads;
    `answers` (JSON) are `load_checkpoint`'s keywords for what the weights cannot tell."""
    return on_server_device(load_checkpoint(path, **json.loads(answers)).eval())


def file_answers(path: str) -> dict:
    """The answers given in this session for a checkpoint file (its keywords of load_checkpoint)."""
    return dict(st.session_state.get(_ANSWERS, {}).get(path, {}))


def _set_answers(path: str, answers: dict) -> None:
    st.session_state.setdefault(_ANSWERS, {})[path] = {k: v for k, v in answers.items() if v is not None}


@st.cache_resource(max_entries=1, show_spinner=False)
def untrained_cifar_model() -> VisionTransformer:
    """A randomly initialised ViT the size of the bundled CIFAR-10 model (seed 0)."""
    cfg = ViTConfig(
        img_size=32,
        patch_size=4,
        num_classes=10,
        embed_dim=192,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pct=1.0,
        name="Untrained CIFAR-sized ViT",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VisionTransformer(cfg, list(CIFAR10_CLASSES))
    return on_server_device(model.eval())


@st.cache_resource(max_entries=2, show_spinner="Loading the pretrained model...")
def _load_pretrained(name: str) -> VisionTransformer:
    return on_server_device(load_pretrained(name).eval())


def pretrained_catalogue() -> dict[str, str]:
    """Catalogue key -> menu label (title and download size)."""
    return {m.key: f"{m.title} ({m.download_mb:.0f} MB)" for m in list_pretrained()}


def pretrained_about(name: str) -> str:
    """One line on a catalogue model."""
    try:
        return get_pretrained(name).about
    except CheckpointError:
        return ""


def pretrained_is_downloaded(name: str) -> bool:
    """Whether a catalogue entry is already on disk (loading it then needs no network)."""
    try:
        return is_downloaded(name)
    except Exception:  # a look into the download cache must never break the sidebar
        return False


# ---- where checkpoint files may come from ----


def upload_store() -> UploadStore:
    """The store of uploaded files (one root for the process, shared with the Train page)."""
    return UploadStore(UPLOAD_DIR)


def session_key(session_id: str) -> str:
    """A folder-safe form of a Streamlit session id (the same as the Train page's)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


class _SessionFiles:
    """This session's folder in the upload store; removed with the session (`release`)."""

    def __init__(self, session: str, store: UploadStore) -> None:
        self.session = session
        self.store = store

    @property
    def folder(self) -> Path:
        return self.store.session_dir(self.session)

    def release(self) -> None:
        self.store.remove_session(self.session)


def _release(files: _SessionFiles) -> None:
    files.release()


@st.cache_resource(scope="session", on_release=_release, max_entries=4, show_spinner=False)
def _session_files_resource(session: str, root: str) -> _SessionFiles:
    """Session-scoped: released (its folder removed) when the browser session ends."""
    return _SessionFiles(session, UploadStore(root))


def session_files() -> _SessionFiles:
    """This session's uploaded checkpoints (its folder is removed when the session ends)."""
    return _session_files_resource(session_key(_session_id()), str(UPLOAD_DIR))


def models_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of checkpoints the server offers everyone (`VIT_EXPLORER_MODELS`), if set."""
    raw = (os.environ if environ is None else environ).get(MODELS_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def _inside(path: str | Path, folder: str | Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def path_allowed(path: str | Path) -> bool:
    """Whether a typed checkpoint path may be loaded: never from the upload store or the run folders
    (other sessions' files); in classroom mode only from `VIT_EXPLORER_MODELS`."""
    if _inside(path, UPLOAD_DIR) or _inside(path, runs_root()):
        return False
    if is_public():
        folder = models_folder()
        return folder is not None and _inside(path, folder)
    return True


def _file_allowed(path: str) -> bool:
    """Whether a "file:" key may be loaded in this session: the bundled model, runs/, the models folder,
    a path the checks allow, or this session's own uploads (never another session's)."""
    if _inside(path, UPLOAD_DIR):
        return _inside(path, session_files().folder)
    if _inside(path, BUNDLED_PATH) or _inside(path, RUNS_DIR):
        return True
    folder = models_folder()
    return (folder is not None and _inside(path, folder)) or path_allowed(path)


def _file_stat(path: str) -> tuple[float, int]:
    """(mtime, size) of a checkpoint that may be loaded; checked by `stat` before anything opens it.

    A folder (a Hugging Face or timm Hub folder) is read by `load_checkpoint`, which opens only
    the regular files in it. Every refusal is the same message (`NO_CHECKPOINT`).
    """
    if not _file_allowed(path):
        raise CheckpointError(NO_CHECKPOINT)
    try:
        if os.path.isdir(path):  # only a model folder (its config or weights inside) says it is one
            if not any(os.path.isfile(os.path.join(path, n)) for n in ("config.json", *WEIGHT_FILES)):
                raise CheckpointError(NO_CHECKPOINT)
            st_ = os.stat(path)
        else:
            st_ = os.stat(check_regular_file(path, current_limits().max_checkpoint_bytes, "checkpoint"))
    except (UploadError, OSError):
        raise CheckpointError(NO_CHECKPOINT) from None
    return st_.st_mtime, st_.st_size


def load_model(key: str) -> LoadedModel:
    """The model behind a picker key.

    Raises:
        CheckpointError: the file is missing, damaged or not a ViT we can read.
    """
    if key == "bundled":
        if not BUNDLED_PATH.exists():
            raise CheckpointError("The bundled CIFAR-10 model (assets/vit_cifar10.safetensors) is not installed.")
        key = f"file:{BUNDLED_PATH}"
        loaded = load_model(key)
        loaded.key, loaded.label = "bundled", "Bundled: ViT on CIFAR-10"
        return loaded
    if key == "untrained":
        return LoadedModel(
            untrained_cifar_model(), "untrained-cifar:0", key, "Untrained CIFAR-sized ViT (random weights)", True
        )
    kind, _, name = key.partition(":")
    if kind == "file":
        mtime, size = _file_stat(name)
        answers = json.dumps(file_answers(name), sort_keys=True)
        model = _load_file(name, mtime, size, answers)
        model_id = f"file:{name}:{mtime}:{size}" + ("" if answers == "{}" else f":{answers}")
        return LoadedModel(model, model_id, key, _file_label(name))
    if kind == "session":
        sm = st.session_state.get(_SESSION_MODELS, {}).get(name)
        if sm is None:
            raise CheckpointError(f"The session model {name!r} is gone (the browser session was restarted).")
        return LoadedModel(sm.model, sm.model_id, key, f"Trained this session: {name}")
    if kind == "pretrained":
        return LoadedModel(_load_pretrained(name), f"pretrained:{name}", key, f"Pretrained: {name}")
    raise CheckpointError(f"Unknown model choice {key!r}.")


def _file_label(path: str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        folder = models_folder()
        if _inside(p, UPLOAD_DIR) or (folder is not None and _inside(p, folder)):
            return p.name  # the user's own (safe) file name; no server folder
        return str(p)


def run_checkpoints() -> list[str]:
    """Checkpoints the trainer left under runs/, newest first."""
    if not RUNS_DIR.is_dir():
        return []
    files = [p for p in RUNS_DIR.glob("**/*.safetensors") if p.is_file()]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in files[:12]]


def server_checkpoints() -> list[str]:
    """Checkpoint files in the server's models folder (`VIT_EXPLORER_MODELS`), by name, at most 24."""
    folder = models_folder()
    if folder is None or not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()]
    return [str(p) for p in sorted(files)[:24]]


def model_options() -> dict[str, str]:
    """Picker key -> label, in menu order; the first is the default."""
    opts: dict[str, str] = {}
    if BUNDLED_PATH.exists():
        opts["bundled"] = "Bundled: ViT on CIFAR-10"
    for path in run_checkpoints():
        opts[f"file:{path}"] = f"Run: {_file_label(path)}"
    for path in server_checkpoints():
        opts[f"file:{path}"] = f"Server: {Path(path).name}"
    opts["untrained"] = "Untrained CIFAR-sized ViT (random weights)"
    for name in st.session_state.get(_SESSION_MODELS, {}):
        opts[f"session:{name}"] = f"Trained this session: {name}"
    opts.update(st.session_state.get(_EXTRA, {}))
    return opts


def _add_extra(key: str, label: str) -> None:
    st.session_state.setdefault(_EXTRA, {})[key] = label


def _try_select(key: str, label: str) -> bool:
    """Load `key`; on success add it to the menu and select it, else keep the last good model.
    A file that needs answers (`AnswerNeededError`) waits for them in the sidebar's form."""
    st.session_state.pop(_QUESTION, None)
    try:
        load_model(key)
    except AnswerNeededError as e:
        st.session_state[_QUESTION] = {"key": key, "label": label, "family": e.family, "questions": e.questions}
        return False
    except CheckpointError as e:
        st.session_state[_ERROR] = f"{e} The previous model is still in use."
        return False
    if key not in model_options():
        _add_extra(key, label)
    st.session_state[_PENDING] = key
    return True


def select_from_link(key: str) -> str | None:
    """Select the model a shared link names (a picker key); None when selected, else why not, in a few words.

    Only what this server has: the picker's menu and catalogue models already downloaded (a
    link never starts a download, nor names a file by path).
    """
    if key in model_options():
        st.session_state[CHOICE] = key
        return None
    kind, _, name = key.partition(":")
    if kind == "pretrained" and name in pretrained_catalogue():
        if not pretrained_is_downloaded(name):
            return f"{name} has not been downloaded on this server: use More models in the sidebar"
        return None if _try_select(key, f"Pretrained: {name}") else f"{name} could not be loaded"
    if kind == "session":
        return "a model trained in another browser session"
    return f"“{key}”"


def save_upload(name: str, data: bytes) -> Path:
    """Check an uploaded checkpoint in memory, then keep it in this session's folder.

    Raises:
        CheckpointError: too large, not a checkpoint format, or (when its config is in the file)
            a model over the server's caps; nothing is written.
        UploadError: over the session's or the server's upload quota; nothing is written.
    """
    check_checkpoint_bytes(data, name)
    files = session_files()
    files.store.sweep()  # what sessions that vanished left behind
    return files.store.save(files.session, name, data)


def _on_upload_checkpoint() -> None:
    up = st.session_state.get("model_upload")
    if up is None or is_public():
        return
    try:
        path = save_upload(up.name, up.getvalue())
    except (CheckpointError, UploadError) as e:
        st.session_state[_ERROR] = f"{up.name} was not loaded: {e} The previous model is still in use."
        return
    if not _try_select(f"file:{path}", f"Uploaded: {up.name}") and _QUESTION not in st.session_state:
        remove_quietly(path)  # refused when loaded (a format or cost only the weights tell): nothing left behind


def _on_model_path() -> None:
    raw = st.session_state.get("model_path", "").strip()
    if not raw:
        return
    folder = models_folder() if is_public() else None
    if is_public() and folder is None:
        return
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (folder if folder is not None else ROOT) / path
    if not path_allowed(path):
        st.session_state[_ERROR] = f"{NO_CHECKPOINT} The previous model is still in use."
        return
    _try_select(f"file:{path}", f"File: {raw}")


def _on_pick() -> None:
    """The picker changed: keep the new model if it loads, else keep the current one."""
    key = st.session_state.get(MODEL_KEY)
    try:
        load_model(key)
    except CheckpointError as e:
        st.session_state[_ERROR] = f"{e} The previous model is still in use."
        return
    st.session_state[CHOICE] = key


def model_picker() -> LoadedModel:
    """Draw the model picker in the sidebar and return the selected, loaded model.

    A model that fails to load leaves the previous one in place with a short message.
    """
    opts = model_options()
    pending = st.session_state.pop(_PENDING, None)
    if pending is not None and pending in opts:
        st.session_state[CHOICE] = pending
    if st.session_state.get(CHOICE) not in opts:
        st.session_state[CHOICE] = next(iter(opts))
    st.session_state[MODEL_KEY] = st.session_state[CHOICE]
    sb = st.sidebar
    sb.selectbox("Model", list(opts), format_func=opts.get, key=MODEL_KEY, on_change=_on_pick)
    if not BUNDLED_PATH.exists():
        sb.caption("The bundled CIFAR-10 model is not installed yet: pick a run, or the untrained model.")
    # One container for the messages, always drawn: when a message comes or goes, the expander
    # below keeps its place, so it stays open and an upload in flight inside it is not lost.
    messages = sb.container()
    error = st.session_state.pop(_ERROR, None)
    if error:
        messages.error(error)
    question = st.session_state.get(_QUESTION)
    if question:
        with messages:
            _ask(question)
    key = st.session_state[CHOICE]
    try:
        loaded = load_model(key)
    except CheckpointError as e:  # e.g. the file changed on disk since it was chosen
        messages.error(f"{e} Using the previous model.")
        fallback = st.session_state.get(_LAST_GOOD, "untrained")
        loaded = load_model(fallback if fallback != key else "untrained")
    st.session_state[_LAST_GOOD] = loaded.key
    _model_summary(loaded)
    with sb.expander("More models: pretrained, upload, path"):
        _more_models()
    with sb.expander("Your own model"):
        _own_model_help()
    if is_public():
        sb.caption(
            ":material/school: Classroom mode", help="This server is set up for a class (`VIT_EXPLORER_PUBLIC=1`)."
        )
    return loaded


def _ask(question: dict) -> None:
    """The form for a file whose weights do not tell everything: one menu per question."""
    family = FAMILIES.get(question["family"], question["family"])
    st.info(f"**{question['label']}** looks like {family}. Its weights do not tell everything; please answer:")
    questions: tuple[Question, ...] = question["questions"]
    with st.form("model_answers_form", border=False):
        for q in questions:
            st.selectbox(
                q.prompt[:1].upper() + q.prompt[1:], q.choices, format_func=q.label, key=f"answer_{q.argument}"
            )
        if st.form_submit_button("Load with these answers", type="primary"):
            _answer(question)
            st.rerun()
    if st.button("Cancel", key="answers_cancel"):
        st.session_state.pop(_QUESTION, None)
        st.rerun()


def _answer(question: dict) -> None:
    path = question["key"].partition(":")[2]
    answers = file_answers(path)
    for q in question["questions"]:
        answers[q.argument] = st.session_state.get(f"answer_{q.argument}", q.choices[0])
    _set_answers(path, answers)
    _try_select(question["key"], question["label"])  # may ask the next question


def _own_model_help() -> None:
    # one element, not 17: every element on a page costs the browser time on every rerun of any part of it
    parts = [
        "Trained your own ViT with vit-pytorch, a tutorial's code or `nn.TransformerEncoderLayer`? Add two lines "
        "after training, then upload the file above (a Lightning `.ckpt` works too). Only the weights are read."
    ]
    for family, code, asks in SAVE_HELP:
        parts.append(
            f"**{FAMILIES[family][:1].upper() + FAMILIES[family][1:]}**\n\n```python\n{code}\n```\n\nThe app will ask: {asks}."
        )
    parts.append("Once loaded, saving it in this app's format keeps your answers with the weights.")
    st.caption("\n\n".join(parts))


def _on_as_intended() -> None:
    path = st.session_state.get(CHOICE, "").partition(":")[2]
    answers = file_answers(path)
    answers["attention_axis"] = "tokens" if st.session_state.get("as_intended") else None
    _set_answers(path, answers)


def _model_summary(loaded: LoadedModel) -> None:
    info = describe(loaded.model)
    gh, gw = info["grid"]
    h, w = loaded.model.cfg.img_size
    sb = st.sidebar
    if loaded.untrained:
        sb.warning("Untrained: random weights. Its predictions mean nothing; the shapes and maths are real.")
    acc = bundled_test_accuracy() if loaded.key == "bundled" else None
    sb.caption(
        f"{info['params'] / 1e6:.2f} M parameters · {h}x{w} input · patch {info['patch_size']} · "
        f"grid {gh}x{gw} · {info['depth']} layers · {info['num_heads']} heads · D {info['embed_dim']} · "
        f"{info['num_classes']} classes" + (f" · {acc:.1%} right on the CIFAR-10 test set" if acc else "")
    )
    _architecture_notes(loaded, info)


def _architecture_notes(loaded: LoadedModel, info: dict) -> None:
    """What sets a student's model apart, on every page (the sidebar); the batch-attention
    finding as a warning, with the "as intended" view of the same weights."""
    sb = st.sidebar
    notes = list(info["notes"])
    cfg = loaded.model.cfg
    family = cfg.extra.get("family") if isinstance(cfg.extra, dict) else None
    intended = family == "mha-tutorial" and cfg.attention_axis == "tokens"
    if info["attends_across_batch"]:
        sb.warning(notes.pop(0))
    elif intended:
        sb.warning(
            "Viewed as intended: tokens attend to tokens. This is not what the file's code computes, nor what "
            "its weights were trained with; untick the box below to see what it really computes."
        )
    if info["family"]:
        sb.caption(f"Your own model: {info['family']}. " + " ".join(notes))
    elif notes:
        sb.caption(" ".join(notes))
    if loaded.key.startswith("file:") and (info["attends_across_batch"] or intended):
        st.session_state["as_intended"] = intended
        sb.checkbox(
            "View it as intended (tokens attend to tokens)",
            key="as_intended",
            on_change=_on_as_intended,
            help="The same weights with the attention its author meant: across the tokens of each image. "
            "The weights were trained with the code as written, so expect different predictions.",
        )


def bundled_test_accuracy() -> float | None:
    """The bundled model's measured test accuracy (assets/vit_cifar10.metrics.json), if recorded."""
    path = BUNDLED_PATH.with_name(BUNDLED_PATH.name.removesuffix(".safetensors") + ".metrics.json")
    try:
        return _read_accuracy(str(path), path.stat().st_mtime)
    except OSError:
        return None


@functools.lru_cache(maxsize=4)
def _read_accuracy(path: str, mtime: float) -> float | None:
    try:
        acc = json.loads(Path(path).read_text()).get("test_acc")
    except (OSError, ValueError, AttributeError):
        return None
    return float(acc) if isinstance(acc, (int, float)) and 0 <= acc <= 1 else None


def _more_models() -> None:
    catalogue = pretrained_catalogue()
    name = st.selectbox(
        "Pretrained catalogue", list(catalogue), format_func=lambda n: catalogue[n], key="pretrained_name"
    )
    st.caption(pretrained_about(name))
    have = pretrained_is_downloaded(name)
    if st.button("Use it" if have else "Download and use", key="pretrained_go"):
        _download_and_select(name, have)
    lim = current_limits()
    if lim.public:
        folder = models_folder()
        if folder is not None:
            st.text_input("…or a checkpoint in the server's models folder", key="model_path", on_change=_on_model_path)
        st.caption("Classroom mode: checkpoint uploads and paths are off on this server.")
        return
    st.file_uploader(
        "Upload a checkpoint (.safetensors, .pth, .pt, .bin, Lightning .ckpt)",
        type=["safetensors", "pth", "pt", "bin", "ckpt"],
        key="model_upload",
        on_change=_on_upload_checkpoint,
        max_upload_size=max(1, lim.max_checkpoint_bytes // 2**20),
    )
    st.text_input(
        "…or a checkpoint path", key="model_path", on_change=_on_model_path, placeholder="runs/quick/best.safetensors"
    )


def _download_and_select(name: str, have: bool) -> None:
    if not have:
        bar = st.progress(0.0, text=f"Downloading {name}...")

        def progress(done: int, total: int | None) -> None:
            frac = done / total if total else 0.0
            size = f"{total / 2**20:.0f} MB" if total else "? MB"  # total is None when the server does not say
            bar.progress(min(max(frac, 0.0), 1.0), text=f"Downloading {name}: {done / 2**20:.0f} / {size}")

        try:
            download_pretrained(name, progress=progress)
        except Exception as e:  # no network, a proxy, a full disk: say so, keep the app going
            bar.empty()
            st.error(f"Could not download {name}. {str(e)[:700]}")  # the end says where to put the file by hand
            return
        bar.empty()
    if _try_select(f"pretrained:{name}", f"Pretrained: {name}"):
        st.rerun()
    else:
        st.error(st.session_state.pop(_ERROR, "The model could not be loaded."))
