"""vit_core.runs: background training runs, their view, pause/stop/resume, the cap, owners, data, snapshots."""

from __future__ import annotations

import gc
import hashlib
import math
import re
import tarfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from tests._tiny_data import make_cifar_archive, make_image_folder, make_jpeg_archive, tiny_config, wait_for
from vit_core import analysis as A
from vit_core import fetch, load_checkpoint, runs, sources
from vit_core.costs import calibrate, estimate_seconds, forward_flops, model_size, seconds_per_image
from vit_core.download_job import DownloadJob
from vit_core.errors import DataError
from vit_core.model import VisionTransformer
from vit_core.runs import TrainingRun, active_runs
from vit_core.snapshots import take_snapshot
from vit_core.sources import DataSource, inspect_source, load_source, missing_data_help
from vit_plots.training import confusion_figure, ema, per_class_figure, training_curves_figure


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Caches and run folders in tmp_path, one torch thread (steady step times on a shared CPU)."""
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "0")
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    for run in runs.queued_runs() + active_runs():
        run.stop()
        run.join(30)
    torch.set_num_threads(threads)


@pytest.fixture
def folder(env):
    return make_image_folder(env / "tiny")


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- the run's life: start, live view, pause, stop, resume, finish ---------------------------


def test_run_start_pause_stop_resume_finish_matches_an_uninterrupted_run(folder):
    cfg = tiny_config(epochs=10)  # 9 steps per epoch -> 90 steps
    run = TrainingRun(cfg, DataSource("path", str(folder)), snapshots=6)
    run.start()
    wait_for(lambda: run.view().step >= 3, what="three steps")
    v = run.view()
    assert v.status == "training" and v.total_steps == 90 and v.train_size == 72 and v.test_size == 24
    assert v.steps == list(range(1, v.step + 1)) and len(v.loss) == len(v.lr) == v.step
    assert v.params == model_size(cfg, 3)[0] and v.tokens == 17
    assert v.snapshots[0].step == 0  # the untrained model is the first picture

    run.pause()
    assert run.view().status == "paused"  # at once, for the page
    wait_for(lambda: run.view().held, what="the loop to hold")  # after the step in flight
    paused_at = run.view().step
    time.sleep(0.5)
    v = run.view()
    assert v.status == "paused" and v.held and v.step == paused_at < 90

    run.stop()  # while paused: stops before the next step
    assert run.join(30)
    v = run.view()
    assert v.status == "stopped" and v.step == paused_at
    assert "Stopped at step" in v.message and v.can_resume
    assert (v.out_dir / "last.pt").is_file()
    assert v.checkpoint == v.out_dir / "model.safetensors" and load_checkpoint(v.checkpoint).class_names == [
        "class0",
        "class1",
        "class2",
    ]
    assert (
        v.final is not None and v.final.step == paused_at and sum(map(sum, v.final.confusion)) == 24
    )  # the whole test set
    assert v.snapshots[-1].step == paused_at

    run.resume()
    assert run.join(60)
    v = run.view()
    assert v.status == "finished", v.message
    assert v.step == 90 and v.steps == list(range(1, 91))  # no step lost or repeated over the stop
    assert v.final is not None and v.final.step == 90 and "test accuracy" in v.message
    snap_steps = [s.step for s in v.snapshots]
    assert snap_steps == sorted(set(snap_steps)) and snap_steps[0] == 0 and snap_steps[-1] == 90
    assert len(v.evals) >= 10 and all(e.class_names == ["class0", "class1", "class2"] for e in v.evals)
    assert v.final.acc > 0.9  # one colour per class: a working run learns it
    assert not run.alive and run not in active_runs()

    # The stop and resume changed nothing: the same weights as a run that was never interrupted.
    straight = TrainingRun(cfg, DataSource("path", str(folder)), snapshots=6)
    straight.start()
    assert straight.join(60) and straight.view().status == "finished"
    a, b = weights(run.export_model()), weights(straight.export_model())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exported_model_is_a_copy_on_the_cpu_in_eval_mode(folder):
    run = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)), name="mine")
    with pytest.raises(RuntimeError):
        run.export_model()  # nothing trained yet
    run.start()
    assert run.join(60)
    m = run.export_model()
    assert isinstance(m, VisionTransformer) and not m.training and m.cfg.name == "mine"
    assert next(m.parameters()).device.type == "cpu"
    before = weights(m)
    with torch.no_grad():
        next(run._trainer.model.parameters()).add_(1.0)  # the run's own model changes later ...
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # ... the export does not


def test_pause_while_loading_starts_paused_and_stop_before_training(folder):
    run = TrainingRun(tiny_config(), DataSource("path", str(folder)))
    run.start()
    run.pause()  # most likely still loading: the trainer must start paused
    wait_for(lambda: run.view().held, what="the loop to hold")
    held_at = run.view().step
    time.sleep(0.3)
    assert run.view().step == held_at <= 1
    run.stop()
    assert run.join(30) and run.view().status == "stopped"


def test_start_twice_and_resume_of_a_finished_run_are_refused(folder):
    run = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    run.start()
    with pytest.raises(RuntimeError):
        run.start()
    assert run.join(60) and run.view().status == "finished"
    assert not run.view().can_resume
    with pytest.raises(RuntimeError):
        run.resume()


def test_snapshot_cadence_by_steps_and_by_time(folder):
    every_step = TrainingRun(
        tiny_config(epochs=2), DataSource("path", str(folder)), snapshots=1000, min_snapshot_interval_s=0
    )
    every_step.start()
    assert every_step.join(60)
    assert [s.step for s in every_step.view().snapshots] == list(range(0, 19))  # 18 steps, plus step 0
    sparse = TrainingRun(
        tiny_config(epochs=2), DataSource("path", str(folder)), snapshots=1000, min_snapshot_interval_s=1e6
    )
    sparse.start()
    assert sparse.join(60)
    assert [s.step for s in sparse.view().snapshots] == [0, 18]  # the start and the end are always taken


def test_two_clicks_at_once_start_one_thread(folder):
    run = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    refused: list[Exception] = []
    go_ = threading.Barrier(4)

    def click() -> None:
        go_.wait()
        try:
            run.start()
        except RuntimeError as e:
            refused.append(e)

    clicks = [threading.Thread(target=click) for _ in range(4)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join()
    assert len(refused) == 3
    assert run.join(60) and run.view().status == "finished"
    assert run.view().steps == list(range(1, run.view().total_steps + 1))  # one thread trained


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(folder):
    # A learning rate of 1e30 without clipping overflows the weights within a few steps.
    cfg = tiny_config(epochs=5, lr=1e30, warmup_epochs=0.0, grad_clip=0.0, weight_decay=0.0)
    run = TrainingRun(cfg, DataSource("path", str(folder)))
    run.start()
    assert run.join(60)
    v = run.view()
    assert v.status == "diverged", v.message
    assert "diverged" in v.message and "last good checkpoint" in v.message
    model = run.export_model()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the last good weights, not the NaNs
    assert v.checkpoint is not None and all(torch.isfinite(p).all() for p in load_checkpoint(v.checkpoint).parameters())
    assert v.final is not None and math.isfinite(v.final.loss)


def test_a_failure_is_reported_not_raised(env):
    run = TrainingRun(tiny_config(), DataSource("path", str(env / "nowhere")))
    run.start()
    assert run.join(30)
    v = run.view()
    assert v.status == "failed" and "does not exist" in v.message
    assert run not in active_runs()


def test_too_few_images_for_one_batch_is_a_clear_failure(folder):
    run = TrainingRun(tiny_config(batch_size=128), DataSource("path", str(folder)))
    run.start()
    assert run.join(30)
    v = run.view()
    assert v.status == "failed" and "fewer than one batch" in v.message


# ---- the server-wide cap -----------------------------------------------------------------------


def test_a_full_server_queues_the_run_and_starts_it_when_a_slot_frees(folder, monkeypatch):
    """Before: the second run was refused (RunLimitError) while a paused run held the only slot."""
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "1")
    first = TrainingRun(tiny_config(epochs=200), DataSource("path", str(folder)))
    second = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    third = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    first.start()
    first.pause()
    second.start()  # no refusal: a place in the queue
    third.start()
    assert second.view().status == "queued" and second.view().queue_position == 1 and not second.alive
    assert third.view().queue_position == 2
    assert runs.queued_runs() == [second, third]
    third.stop()  # leaving the queue
    assert third.view().status == "stopped" and "Left the queue" in third.view().message
    assert runs.queued_runs() == [second]
    first.stop()
    assert first.join(30)
    wait_for(lambda: second.alive or second.view().done, what="the queued run to start by itself")
    assert second.join(60) and second.view().status == "finished"
    assert active_runs() == [] and runs.queued_runs() == []


def test_max_runs_setting(monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "3")
    assert runs.max_runs() == 3
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "0")
    assert runs.max_runs() == 1
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "lots")
    assert runs.max_runs() == runs.DEFAULT_MAX_RUNS
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS")
    assert runs.max_runs() == runs.DEFAULT_MAX_RUNS


# ---- owners: release, watchdog, grace ----------------------------------------------------------


def test_release_ends_the_thread_and_lets_go_of_the_model(folder):
    run = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)))
    run.start()
    wait_for(lambda: run.view().step >= 2, what="two steps")
    model_ref = weakref.ref(run._trainer.model)
    run.release()  # grace 0: at once
    assert run.join(10), "the training thread is still running after its owner went away"
    v = run.view()
    assert v.status == "stopped" and "went away" in v.message
    assert run not in active_runs()
    assert run._trainer is None and run._data is None and v.snapshots == []
    gc.collect()
    assert model_ref() is None, "the model is still referenced after the owner left"
    assert (v.out_dir / "last.pt").is_file()  # the stop still saved a checkpoint


def test_watchdog_stops_a_run_whose_owner_disconnected(folder, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "0.5")
    connected = {"yes": True}
    run = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)), owner_alive=lambda: connected["yes"])
    run.start()
    wait_for(lambda: run.view().step >= 2, what="two steps")
    time.sleep(1.1)
    assert run.alive  # connected owner: the watchdog leaves it alone
    connected["yes"] = False
    t0 = time.monotonic()
    assert run.join(10), "the watchdog did not stop the run"
    assert 0.4 < time.monotonic() - t0 < 5  # after the grace period, not before
    assert run.view().status == "stopped"


def test_an_owner_that_comes_back_within_the_grace_period_keeps_its_run(folder, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "1.5")
    connected = {"yes": True}
    run = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)), owner_alive=lambda: connected["yes"])
    run.start()
    wait_for(lambda: run.view().step >= 2, what="two steps")
    connected["yes"] = False  # a network blip ...
    run.release()
    time.sleep(0.5)
    connected["yes"] = True  # ... and a reconnect
    time.sleep(2.0)
    assert run.alive and run.view().status == "training"
    run.stop()
    assert run.join(30)


# ---- snapshots ---------------------------------------------------------------------------------


def test_snapshot_equals_the_explorer_analyses():
    torch.manual_seed(0)
    model = VisionTransformer(tiny_config(embed_dim=48, num_heads=3, depth=2).vit_config(3)).train()
    probe = torch.randn(1, 3, 32, 32)
    snap = take_snapshot(model, probe, step=7, epoch=0.5)
    assert model.training  # mode restored
    assert snap.step == 7 and snap.epoch == 0.5
    with torch.no_grad():
        model.eval()
        sim = A.position_similarity(model)
        filters = A.embedding_filters_pca(model, 28)
        _, ratio = A.embedding_pca_components(model, 28)
        tr = model.trace(probe)
        cls = A.rollout_cls_map(tr.attentions, tr.grid, tr.num_prefix_tokens)[0]
    np.testing.assert_allclose(snap.position_similarity, sim.numpy(), atol=1e-6)
    np.testing.assert_allclose(snap.filters_pca, filters.numpy(), atol=1e-6)
    np.testing.assert_allclose(snap.filters_variance, ratio.numpy(), atol=1e-6)
    np.testing.assert_allclose(snap.cls_map, cls.numpy(), atol=1e-6)
    np.testing.assert_allclose(snap.probe_probs, tr.logits.softmax(-1)[0].numpy(), atol=1e-6)
    assert snap.position_similarity.shape == (4, 4, 4, 4) and snap.cls_map.shape == (4, 4)
    assert snap.filters_pca.shape == (28, 8, 8, 3) and snap.filters_pca.min() >= 0 and snap.filters_pca.max() <= 1


# ---- data --------------------------------------------------------------------------------------


def test_inspect_and_load_an_image_folder(folder):
    info = inspect_source(DataSource("path", str(folder)))
    assert (info.train_size, info.test_size, info.class_names, info.image_size) == (
        72,
        24,
        ["class0", "class1", "class2"],
        32,
    )
    train, test = load_source(DataSource("path", str(folder)))
    assert len(train) == 72 and len(test) == 24 and test.class_names == train.class_names
    assert load_source(DataSource("path", str(folder)))[0] is train  # shared, not loaded twice


def test_inspect_explains_what_is_missing(env):
    with pytest.raises(DataError, match="does not exist"):
        inspect_source(DataSource("path", str(env / "nope")))
    (env / "empty").mkdir()
    with pytest.raises(DataError, match="neither the CIFAR-10 archive"):
        inspect_source(DataSource("path", str(env / "empty")))
    (env / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a tar archive"):
        inspect_source(DataSource("path", str(env / "notes.txt")))
    with pytest.raises(DataError) as e:
        inspect_source(DataSource("cache"))  # nothing downloaded into the (empty) cache
    msg = str(e.value)
    assert (
        "cifar-10-python.tar.gz" in msg and "163 MB" in msg and str(env / "cache") in msg and "VIT_EXPLORER_DATA" in msg
    )
    assert msg == missing_data_help()


def test_a_tar_of_an_image_folder_is_unpacked_once_and_loaded(folder, env):
    archive = env / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="mydata")
    assert inspect_source(DataSource("path", str(archive))).description.startswith("archive tiny.tar.gz")
    train, test = load_source(DataSource("path", str(archive)))
    assert len(train) == 72 and len(test) == 24
    assert len([p for p in (env / "cache" / "archives").iterdir() if p.is_dir()]) == 1


def test_an_official_format_archive_is_checked_against_the_published_md5(env, monkeypatch):
    archive = make_cifar_archive(env / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="MD5"):
        load_source(DataSource("path", str(archive)))  # not the real file: refused
    monkeypatch.setattr(fetch, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    train, test = load_source(DataSource("path", str(archive)))
    assert len(train) == 100 and len(test) == 20 and train.class_names[3] == "cat"


def test_download_job_reports_progress_unpacks_and_can_fail(env, monkeypatch):
    archive = make_cifar_archive(env / "src" / "cifar-10-python.tar.gz")
    cache = env / "dl"
    bad = DownloadJob(cache_dir=cache, url=archive.as_uri())
    bad.start()
    assert bad.join(30)
    status, _, _, msg = bad.view()
    assert status == "failed" and "MD5" in msg and not (cache / "cifar-10-python.tar.gz").exists()

    monkeypatch.setattr("vit_core.fetch.CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    seen = []
    job = DownloadJob(cache_dir=cache, url=archive.as_uri())
    progress = job._progress
    monkeypatch.setattr(job, "_progress", lambda d, t: (seen.append((d, t)), progress(d, t)))
    job.start()
    assert job.join(30)
    status, done, total, msg = job.view()
    assert status == "done", msg
    assert done == total == archive.stat().st_size and seen[-1] == (total, total)
    assert sources.cifar10_cached(cache) == cache / "cifar-10-batches-py"

    unreachable = DownloadJob(cache_dir=env / "dl2", url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    unreachable.start()
    assert unreachable.join(30)
    status, _, _, msg = unreachable.view()
    assert status == "failed" and "Could not reach" in msg


# ---- estimates ---------------------------------------------------------------------------------


def test_model_size_matches_the_real_model_and_the_estimate_adds_up():
    cfg = tiny_config(embed_dim=64, depth=2, num_heads=4, patch_size=4)
    params, tokens = model_size(cfg, 10)
    assert params == VisionTransformer(cfg.vit_config(10)).num_params() and tokens == 65
    spi = seconds_per_image(cfg, calibrate(1), 10)
    assert 0 < spi < 1 and forward_flops(cfg, 10) > 0
    # 1000 images, batch 8 -> 125 steps/epoch, 2 epochs = 250 steps; eval every 50 steps -> 6 evals
    c = cfg.replace(epochs=2, batch_size=8, eval_every=50)
    expected = 250 * 8 * 0.01 + (6 * 100 + 400) * 0.01 / 3
    assert estimate_seconds(c, 0.01, train_size=1000, eval_size=100, test_size=400) == pytest.approx(expected)


# ---- figures -------------------------------------------------------------------------------------


def test_training_figures_are_valid_plotly_and_show_the_data():
    n = 2400
    steps = list(range(1, n + 1))
    loss = list(np.linspace(2.3, 0.5, n))
    fig = training_curves_figure(
        steps, loss, [0.5] * n, list(np.linspace(1e-3, 0, n)), [100, 200], [2.0, 1.5], [0.3, 0.6], total_steps=3000
    )
    go.Figure(fig.to_dict())  # full validation
    d = fig.to_dict()
    assert d["layout"]["xaxis"]["range"] == [0, 3000.0]
    raw_x = np.asarray(fig.data[0].x)
    assert len(raw_x) <= 600 and raw_x[0] == 1 and raw_x[-1] == n  # thinned, ends kept
    assert list(fig.data[4].y) == [30.0, 60.0]  # test accuracy in percent
    s = ema([1.0, 1.0, 1.0, float("nan"), 1.0])
    assert np.allclose(s, 1.0)  # bias-corrected: no ramp from 0, NaN skipped

    conf = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    cf = confusion_figure(conf, ["a", "b", "c"])
    go.Figure(cf.to_dict())
    z = np.asarray(cf.data[0].z)
    np.testing.assert_allclose(z.sum(axis=1), 1.0)
    assert z[0, 1] == pytest.approx(0.2)
    pf = per_class_figure([0.8, 0.9, 1.0], ["a", "b", "c"])
    go.Figure(pf.to_dict())
    assert list(pf.data[0].x) == pytest.approx([80.0, 90.0, 100.0])
    with pytest.raises(ValueError):
        confusion_figure(conf, ["a", "b"])


def test_the_run_manager_does_not_import_streamlit():
    # vit_core is the UI-free library: no module of it (runs.py and what it imports) may import streamlit.
    pkg = Path(runs.__file__).parent
    offenders = [
        str(p.relative_to(pkg))
        for p in pkg.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+streamlit", p.read_text(), flags=re.M)
    ]
    assert offenders == []


def test_a_tarred_jpeg_image_folder_trains_in_the_app(env):
    """The offline copy's layout (train/ and test/ at the top of a .tar.gz): inspected, unpacked, trained on."""
    archive = make_jpeg_archive(env / "jpeg.tar.gz")
    source = DataSource("path", str(archive))
    assert inspect_source(source).description.startswith("archive jpeg.tar.gz")
    train, test = load_source(source)
    assert (len(train), len(test), train.class_names) == (72, 24, ["class0", "class1", "class2"])
    assert test.class_names == train.class_names and "archives" in train.source
    run = TrainingRun(tiny_config(epochs=1), source)
    run.start()
    assert run.join(60)
    v = run.view()
    assert v.status == "finished", v.message
    assert v.train_size == 72 and v.final is not None and sum(map(sum, v.final.confusion)) == 24
