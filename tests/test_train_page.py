"""The Train page through Streamlit's AppTest, on a tiny generated image folder and a tiny ViT.

AppTest runs the page script in this process, so the test can look at the session's
`TrainingRun` (what the background thread did) next to what the page shows. Fragments do not
re-run by themselves under AppTest; each `at.run()` here stands for one poll of the page.
"""

from __future__ import annotations

import gc
import hashlib
import re
import time
import weakref
from pathlib import Path

import pytest
import torch
from streamlit.runtime.caching import clear_session_resource_cache
from streamlit.testing.v1 import AppTest

from tests._tiny_data import make_cifar_archive, make_image_folder, wait_for
from vit_core import download_job, runs
from vit_core.costs import model_size
from vit_core.runs import active_runs

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/7_train.py"
TIMEOUT = 120
APPTEST_SESSION = "test session id"  # the session id AppTest's LocalScriptRunner gives every script run
TINY = {"train_patch": 8, "train_width": 32, "train_depth": 1, "train_heads": 2, "train_batch": 8}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A 3-class image folder as the suggested data ($VIT_EXPLORER_DATA), run folders in tmp_path."""
    folder = make_image_folder(tmp_path / "data")
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(folder))
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "0")
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield folder
    for run in active_runs():
        run.stop()
        run.join(30)
    torch.set_num_threads(threads)


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def set_tiny(at: AppTest, epochs: float) -> None:
    for key, value in TINY.items():
        (at.slider(key=key) if key == "train_depth" else at.selectbox(key=key)).set_value(value)
    at.number_input(key="train_epochs").set_value(epochs)
    at.run()
    assert not at.exception, [e.message for e in at.exception]


def poll(at: AppTest, cond, timeout: float = 60.0, what: str = "condition") -> None:
    """Re-run the page (one poll) until `cond()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def progress_text(at: AppTest) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


def texts(at: AppTest, kind: str) -> str:
    return " | ".join(str(e.value) for e in getattr(at, kind))


def test_start_live_pause_stop_resume_finish_and_use_the_model(tiny):
    at = open_page()
    assert at.title[0].value == "Train a ViT and watch it learn"
    assert at.radio(key="train_source").value == "path" and at.text_input(key="train_path").value == str(tiny)
    assert "72 training and 24 test images, 3 classes, 32x32 pixels" in texts(at, "success")
    assert "train_run" not in at.session_state  # nothing trains before Start

    total = 360  # 40 epochs of 72 images at batch 8: long enough to watch, pause and stop it mid-run
    set_tiny(at, epochs=total // 9)
    m = metrics(at)
    params, tokens = model_size(
        runs.APP_PRESETS["demo"].replace(**{"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}), 3
    )
    assert m["Parameters"] == f"{params:,}" and m["Tokens per image"] == str(tokens) == "17"
    assert m["Optimiser steps"] == str(total)  # 72 images / batch 8 = 9 steps per epoch
    assert m["Estimated time"].endswith(("s", "min"))
    assert "floating-point operations" in texts(at, "caption") and "measured once" in texts(at, "caption")

    at.button(key="train_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    run = at.session_state["train_run"]
    assert run.alive or run.view().step > 0
    assert run.cfg.batch_size == 8 and run.cfg.embed_dim == 32 and run.cfg.epochs == total / 9

    # live: the page shows the thread's progress as it moves
    poll(at, lambda: run.view().step > 0 and "step" in progress_text(at), what="the first steps on the page")
    first = run.view().step
    assert at.button(key="train_pause") and at.button(key="train_stop")
    assert len(at.get("plotly_chart")) >= 1  # the curves
    poll(at, lambda: run.view().step > first and run.view().snapshots, what="more steps and a snapshot")
    shown = progress_text(at)
    assert f"of {run.view().total_steps}" in shown

    at.button(key="train_pause").click().run()
    wait_for(lambda: run.view().held, what="the loop to hold")
    held_at = run.view().step
    at.run()
    assert progress_text(at).startswith("Paused") and at.button(key="train_unpause")
    time.sleep(0.4)
    at.run()
    assert run.view().step == held_at < total

    at.button(key="train_stop").click().run()
    assert run.join(60)
    poll(at, lambda: bool(at.warning), what="the stopped run's results")
    v = run.view()
    assert v.status == "stopped" and v.step == held_at
    assert f"Stopped at step {held_at} of {total}" in texts(at, "warning")
    assert (v.out_dir / "last.pt").is_file() and v.checkpoint.is_file()
    assert metrics(at)["Steps"] == f"{held_at} of {total}"

    at.button(key="train_resume").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert run.join(90)
    poll(at, lambda: bool(at.success), what="the finished run's results")
    v = run.view()
    assert v.status == "finished" and v.step == total and v.steps == list(range(1, total + 1))
    assert f"Finished {total} steps: test accuracy" in texts(at, "success")
    assert metrics(at)["Test accuracy"] == f"{v.final.acc:.1%}"
    # curves, three snapshot panels, confusion matrix, per-class accuracy
    assert len(at.get("plotly_chart")) == 6
    steps = [s.step for s in v.snapshots]
    slider = at.select_slider(key="train_snapshot")
    assert list(slider.options) == [str(s) for s in steps] and slider.value == steps[-1] == total
    slider.set_value(0).run()
    assert "Step 0 (epoch 0.00)." in texts(at, "caption")
    assert at.get("download_button")  # the checkpoint, as .safetensors

    at.button(key="train_use").click().run()
    assert not at.exception, [e.message for e in at.exception]
    name = at.session_state["_train_used"]
    assert "is now selected" in texts(at, "info") and name in texts(at, "info")

    # every page now offers (and shows) the trained model: the sidebar picker of another page
    at.switch_page("pages/1_overview.py").run()
    assert not at.exception, [e.message for e in at.exception]
    picker = at.sidebar.selectbox(key="model_key")
    assert f"session:{name}" in picker.options or f"Trained this session: {name}" in picker.options
    assert at.session_state["model_key"] == f"session:{name}"
    assert "Trained this session" in picker.value or picker.value == f"session:{name}"


def test_the_thread_ends_when_the_session_ends(tiny):
    at = open_page()
    set_tiny(at, epochs=500)
    at.button(key="train_start").click().run()
    run = at.session_state["train_run"]
    wait_for(lambda: run.view().step >= 2, what="two steps")
    model_ref = weakref.ref(run._trainer.model)
    thread = run._thread
    # What Streamlit does when a browser tab goes away: clear the session's resource caches,
    # which calls the page's on_release callback for the session-scoped lease.
    clear_session_resource_cache(APPTEST_SESSION)
    thread.join(15)
    assert not thread.is_alive(), "the training thread outlived its session"
    assert run not in active_runs()
    assert run.view().status == "stopped" and "went away" in run.view().message
    gc.collect()
    assert model_ref() is None, "the session's model is still in memory"


def test_a_full_server_shows_the_place_in_the_queue_and_starts_the_run_by_itself(tiny, monkeypatch):
    """Before: the second session was refused ("already training 1 model")."""
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "1")
    a = open_page()
    set_tiny(a, epochs=500)
    a.button(key="train_start").click().run()
    run_a = a.session_state["train_run"]
    assert run_a.alive

    b = open_page()  # another browser session
    assert "at most 1 at once" in texts(b, "caption") and "queue" in texts(b, "caption")
    set_tiny(b, epochs=1)
    b.button(key="train_start").click().run()
    assert not b.exception, [e.message for e in b.exception]
    run_b = b.session_state["train_run"]
    assert run_b.view().status == "queued"
    assert "You are 1st in the queue" in texts(b, "info")
    a.run()  # the first session keeps working
    assert not a.exception and run_a.alive

    run_a.stop()
    assert run_a.join(30)
    wait_for(lambda: run_b.alive or run_b.view().done, what="the queued run to start by itself")
    assert run_b.join(60) and run_b.view().status == "finished"
    poll(b, lambda: bool(b.success), what="the results in the second session")


def test_the_rest_of_the_app_works_while_training(tiny):
    at = open_page()
    set_tiny(at, epochs=500)
    at.button(key="train_start").click().run()
    run = at.session_state["train_run"]
    wait_for(lambda: run.view().step >= 1, what="a step")
    for page in ("pages/4_positions.py", "pages/1_overview.py"):
        at.switch_page(page).run()
        assert not at.exception, [e.message for e in at.exception]
    assert run.alive and run.view().status == "training"  # still going while another page is shown
    at.switch_page(PAGE).run()
    assert at.button(key="train_stop")  # back on the page: the live view of the same run
    at.button(key="train_stop").click().run()
    assert run.join(30) and run.view().status == "stopped"


def test_bad_settings_disable_start(tiny):
    at = open_page()
    set_tiny(at, epochs=1)
    at.selectbox(key="train_heads").set_value(3).run()  # 32 is not divisible by 3
    assert "not divisible by 3 heads" in texts(at, "error")
    assert at.button(key="train_start").disabled


def test_no_local_data_says_what_to_fetch_and_downloads_only_on_click(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(cache))  # does not exist yet
    monkeypatch.setattr("ui.training.data_picker.ROOT", tmp_path)  # no ./data/cifar10 either
    at = open_page()
    assert at.radio(key="train_source").value == "path" and at.text_input(key="train_path").value == ""
    info = texts(at, "info")
    assert "No copy of CIFAR-10 was found" in info and "cifar-10-python.tar.gz" in info
    assert "163 MB" in info and str(cache) in info
    assert at.button(key="train_start").disabled

    at.text_input(key="train_path").set_value(str(tmp_path / "missing")).run()
    assert "does not exist" in texts(at, "error") and "No copy of CIFAR-10" in texts(at, "info")

    at.radio(key="train_source").set_value("download").run()
    assert "163 MB" in texts(at, "markdown") and "cs.toronto.edu" in texts(at, "markdown")
    assert "train_download" not in at.session_state  # nothing downloads before the click
    assert not cache.exists()

    archive = make_cifar_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(download_job, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr("vit_core.fetch.CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    at.button(key="train_download_go").click().run()
    job = at.session_state["train_download"]
    assert job.join(30) and job.view()[0] == "done", job.view()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert f"CIFAR-10 (extracted in {cache})" in texts(at, "success")
    assert not at.button(key="train_start").disabled


def test_use_this_model_after_the_app_modules_were_reloaded(tiny, monkeypatch):
    """Streamlit re-imports edited modules: a run started before holds a model of the old class."""
    import ui.training.lease
    from vit_core.model import VisionTransformer

    class Reloaded(VisionTransformer):  # stands for the class of a re-imported vit_core.model
        pass

    at = open_page()
    set_tiny(at, epochs=1)
    at.button(key="train_start").click().run()
    run = at.session_state["train_run"]
    assert run.join(60)
    poll(at, lambda: bool(at.success), what="the results")
    monkeypatch.setattr(ui.training.lease, "VisionTransformer", Reloaded)
    at.button(key="train_use").click().run()
    assert not at.exception, [e.message for e in at.exception]
    name = at.session_state["_train_used"]
    model = at.session_state["session_models"][name].model
    assert type(model) is Reloaded and not model.training
    trained = run.export_model().state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


# ---- issue 16 / issue 15: the page in a classroom ------------------------------------------------------


def test_an_uploaded_archive_bomb_is_refused_in_memory_and_a_good_upload_is_stored_once(tiny, tmp_path, monkeypatch):
    import io
    import tarfile

    from tests._tiny_data import make_jpeg_archive
    from ui.training import uploads

    monkeypatch.setattr(uploads, "UPLOAD_DIR", tmp_path / "uploads")
    monkeypatch.setenv("VIT_EXPLORER_MAX_ARCHIVE_MB", "8")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("train/a/zeros.jpg")
        info.size = 64 * 2**20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    at = open_page()
    at.radio(key="train_source").set_value("upload").run()
    at.file_uploader(key="train_upload").upload("bomb.tar.gz", buf.getvalue(), "application/gzip").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "unpacks to more than 8 MB" in texts(at, "error")
    assert not list((tmp_path / "uploads").rglob("*.tar*")) and not (tmp_path / "cache").exists()
    assert at.button(key="train_start").disabled

    good = make_jpeg_archive(tmp_path / "mine.tar.gz").read_bytes()
    b = open_page()  # another session uploads a good archive, twice in two sessions
    for session in (at, b):
        session.radio(key="train_source").set_value("upload").run()
        session.file_uploader(key="train_upload").upload("mine.tar.gz", good, "application/gzip").run()
        assert not session.exception, [e.message for e in session.exception]
    assert len(list((tmp_path / "uploads" / "shared").glob("*.tar.gz"))) == 1
    assert "72 training and 24 test images" in texts(b, "success")


def test_changing_the_form_times_no_training_steps(tiny, monkeypatch):
    """Before: every new shape timed three training steps in the request thread (108 s of CPU for one change)."""
    from vit_core import costs

    measured = []
    real = costs._measure
    monkeypatch.setattr(costs, "_measure", lambda t, d: measured.append(t) or real(t, d))
    at = open_page()
    set_tiny(at, epochs=2)
    t0 = time.process_time()
    for width in (16, 48, 64, 96):
        at.selectbox(key="train_width").set_value(width).run()
        assert not at.exception, [e.message for e in at.exception]
    assert len(measured) <= 1  # at most the one calibration of this process
    assert time.process_time() - t0 < 20
    assert "floating-point operations" in texts(at, "caption")


def test_preset_labels_show_this_servers_estimate_and_the_measured_figure(tiny):
    at = open_page()
    preset = at.selectbox(key="train_preset")
    assert preset.value == "demo"
    labels = preset.options
    assert not any(re.search(r"\d+ (minutes|hours|min|h)\b", label) for label in labels), labels  # no fixed times
    caption = texts(at, "caption")
    assert "On this server now, for this data: Demo about" in caption and "Quick about" in caption
    assert "Measured (Demo):" in caption


def test_too_many_epochs_or_tokens_disable_start_with_the_reason(tiny, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_TOKENS", "32")
    at = open_page()
    set_tiny(at, epochs=1)
    at.selectbox(key="train_patch").set_value(4).run()  # 65 tokens
    assert "65 tokens per image" in texts(at, "error") and "allows 32" in texts(at, "error")
    assert at.button(key="train_start").disabled


def test_cifar10_unpacked_by_an_earlier_session_is_found_and_the_text_names_the_jpeg_archive(tmp_path, monkeypatch):
    import shutil

    from vit_core.config import CIFAR10_CLASSES

    cache = tmp_path / "cache"
    entry = cache / "archives" / "0123456789abcdef"
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (entry / split / c).mkdir(parents=True)
    make_image_folder(tmp_path / "src", classes=1, train_per_class=10, test_per_class=2)
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            for p in (tmp_path / "src" / split / "class0").iterdir():
                shutil.copy(p, entry / split / c / p.name)
    (entry / ".complete").write_text("cifar10_jpeg.tar.gz")
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(cache))
    monkeypatch.setattr("ui.training.data_picker.ROOT", tmp_path)  # no ./data/cifar10
    at = open_page()
    assert at.radio(key="train_source").value == "download"
    assert "CIFAR-10 already on this server" in at.radio(key="train_source").options
    assert "CIFAR-10 (an image folder this server unpacked earlier)" in texts(at, "success")
    assert not at.button(key="train_start").disabled
    assert "cifar10_jpeg.tar.gz" in texts(at, "caption") and "*.jpg" in texts(at, "caption")


def test_stop_shows_the_results_within_5_s_and_the_eta_waits_for_a_measurement(tiny):
    at = open_page()
    set_tiny(at, epochs=500)
    at.button(key="train_start").click().run()
    run = at.session_state["train_run"]
    wait_for(lambda: run.view().step >= 1, what="a step")
    at.run()
    assert "measuring the speed" in progress_text(at) or run.view().step >= 5

    t0 = time.monotonic()
    at.button(key="train_stop").click().run()
    poll(at, lambda: bool(at.warning), timeout=5, what="the stopped run's results within 5 s")
    assert time.monotonic() - t0 < 5 + 2  # one AppTest script run of slack
    assert run.join(60)
    poll(at, lambda: metrics(at).get("Test accuracy", "–") != "–", what="the final evaluation")


def test_the_badge_says_a_run_of_this_session_trains_and_links_to_the_train_page(tiny):
    def page() -> None:
        import streamlit as st

        from tests._tiny_data import tiny_config
        from ui.training.badge import running_badge
        from vit_core.runs import TrainingRun
        from vit_core.sources import DataSource

        if "train_run" not in st.session_state:
            run = TrainingRun(tiny_config(epochs=500), DataSource("path", st.secrets.get("folder", "")))
            st.session_state["train_run"] = run
        running_badge()

    at = AppTest.from_function(page, default_timeout=TIMEOUT)
    at.secrets["folder"] = str(tiny)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.sidebar.caption  # a run that was never started: no badge
    run = at.session_state["train_run"]
    run.start()
    wait_for(lambda: run.view().step >= 1, what="a step")
    at.run()
    shown = " ".join(str(c.value) for c in at.sidebar.caption) + " ".join(
        str(getattr(e, "proto", "")) for e in at.sidebar
    )
    assert "Training" in shown
    run.stop()
    assert run.join(60)
    at.run()
    assert "Training" not in " ".join(str(c.value) for c in at.sidebar.caption)
