"""Issue 16 (training and data side) and issue 15 ("Train page in a classroom"): each test fails on the code
before these changes. Limits are set through their environment variables, as a server would."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._tiny_data import make_image_folder, make_jpeg_archive, tiny_config, wait_for
from vit_core import costs, download_job, fetch, runs, sources
from vit_core.errors import DataError
from vit_core.limits import ModelTooLargeError
from vit_core.runs import RunLimitError, TrainingRun, active_runs
from vit_core.sources import DataSource
from vit_core.uploads import UploadError

MB = 2**20


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "0")
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS", raising=False)
    monkeypatch.delenv("VIT_EXPLORER_PUBLIC", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    for run in runs.queued_runs() + active_runs():
        run.stop()
        run.join(30)
    torch.set_num_threads(threads)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_under(folder))


def bomb(path: Path, declared: int = 64 * MB, extra_files: int = 0) -> Path:
    """A small .tar.gz that unpacks to `declared` bytes of zeros (plus some empty files)."""
    with tarfile.open(path, "w:gz") as tf:
        for i in range(extra_files):
            info = tarfile.TarInfo(f"train/a/{i:05d}.jpg")
            tf.addfile(info, io.BytesIO(b""))
        info = tarfile.TarInfo("train/a/zeros.jpg")
        info.size = declared
        tf.addfile(info, _Zeros(declared))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


# ---- archives: limits while reading, nothing left behind --------------------------------------------


def test_an_archive_bomb_is_refused_while_reading_and_leaves_nothing(env, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_ARCHIVE_MB", "8")
    archive = bomb(env / "small.tar.gz", declared=64 * MB)
    assert archive.stat().st_size < 1 * MB
    cache = env / "cache"
    with pytest.raises(DataError, match=r"unpacks to more than 8 MB.*VIT_EXPLORER_MAX_ARCHIVE_MB.*Nothing"):
        sources.load_source(DataSource("path", str(archive)))
    assert bytes_under(cache) == 0, files_under(cache)  # not even a partial or temporary file
    with pytest.raises(DataError, match="unpacks to more than 8 MB"):
        fetch.extract_tar_safely(archive, env / "out")
    assert not (env / "out").exists() and not list(env.glob("out.*"))


def test_the_member_count_is_capped_while_reading(env, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_ARCHIVE_MEMBERS", "20")
    archive = bomb(env / "many.tar.gz", declared=10, extra_files=50)
    with pytest.raises(DataError, match=r"more than 20 files and folders.*VIT_EXPLORER_MAX_ARCHIVE_MEMBERS"):
        fetch.unpack_archive(archive)
    assert bytes_under(env / "cache") == 0


def test_huge_images_are_refused_from_their_header_before_decoding(env, monkeypatch):
    """Before: a 1 KiB archive of huge PNGs was decoded into RAM and cached as a large .npz."""
    root = make_image_folder(env / "src", classes=2, train_per_class=3, test_per_class=2, size=32)
    Image.new("RGB", (3000, 3000)).save(root / "train" / "class0" / "big.png")  # ~30 KB on disk
    archive = env / "huge.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(root / split, arcname=split)
    tracemalloc.start()
    with pytest.raises(DataError, match=r"big.png is 3000x3000 pixels.*at most"):
        sources.load_source(DataSource("path", str(archive)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * MB  # 3000x3000 RGB would be 27 MB decoded
    assert not list((env / "cache").rglob("*.npz"))
    assert [p for p in (env / "cache" / "archives").iterdir() if p.is_dir()] == []  # the unpacked copy is gone


def test_too_many_images_are_refused_from_the_names(env, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_DATASET_IMAGES", "10")
    root = make_image_folder(env / "src", classes=2, train_per_class=8, test_per_class=2)
    with pytest.raises(DataError, match=r"has 16 images.*at most 10.*VIT_EXPLORER_MAX_DATASET_IMAGES"):
        sources.load_split(root, "train")


def test_images_larger_than_a_training_run_may_use_are_refused(env, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_TRAIN_IMG_SIZE", "16")
    root = make_image_folder(env / "src", classes=2, train_per_class=4, test_per_class=2, size=32)
    with pytest.raises(DataError, match=r"32x32 pixels.*at most 16x16.*VIT_EXPLORER_MAX_TRAIN_IMG_SIZE"):
        sources.load_split(root, "train")


def test_a_training_form_that_builds_too_many_tokens_or_epochs_is_refused(env, monkeypatch):
    cfg = tiny_config(patch_size=1)  # 32x32 patches of 1 px: 1025 tokens
    monkeypatch.setenv("VIT_EXPLORER_MAX_TOKENS", "257")
    with pytest.raises(ModelTooLargeError, match=r"1,025 tokens.*allows 257"):
        runs.check_run_config(cfg)
    run = TrainingRun(cfg, DataSource("path", str(env)))
    with pytest.raises(ModelTooLargeError):
        run.start()
    assert run.view().status == "new" and not run.alive and active_runs() == []
    monkeypatch.setenv("VIT_EXPLORER_MAX_EPOCHS", "50")
    with pytest.raises(RunLimitError, match=r"500 epochs.*\(50, VIT_EXPLORER_MAX_EPOCHS\)"):
        TrainingRun(tiny_config(epochs=500), DataSource("path", str(env))).start()
    with pytest.raises(RunLimitError, match="VIT_EXPLORER_MAX_TRAIN_IMG_SIZE"):
        runs.check_run_config(tiny_config(img_size=256, patch_size=16))


# ---- uploads and the data cache ---------------------------------------------------------------------


def test_uploads_are_checked_in_memory_stored_once_within_quota_and_removed_with_the_session(env, monkeypatch):
    from ui.training.uploads import SessionUploads

    root = env / "uploads"
    monkeypatch.setenv("VIT_EXPLORER_MAX_ARCHIVE_MB", "8")
    a = SessionUploads("session a", root)
    with pytest.raises(DataError, match="unpacks to more than 8 MB"):
        a.save("bomb.tar.gz", bomb(env / "b.tar.gz").read_bytes())
    with pytest.raises(DataError, match="not a readable tar archive"):
        a.save("photo.tar.gz", b"\x89PNG not a tar")
    assert files_under(root) == []  # nothing written for refused files

    data = make_jpeg_archive(env / "cifar10_jpeg.tar.gz").read_bytes()
    students = [SessionUploads(f"student {i}", root) for i in range(30)]
    paths = {s.save("cifar10_jpeg.tar.gz", data) for s in students}
    assert len(paths) == 1 and bytes_under(root) < len(data) + 1024  # stored once for all 30
    monkeypatch.setenv("VIT_EXPLORER_UPLOAD_QUOTA_SESSION_MB", str(1.5 * len(data) / MB))
    other = make_jpeg_archive(env / "other.tar.gz", seed=1).read_bytes()
    with pytest.raises(UploadError, match="past"):
        students[0].save("other.tar.gz", other)  # over this session's quota
    assert SessionUploads("student 31", root).save("other.tar.gz", other).is_file()  # others are not affected
    (path,) = paths
    for s in students[:-1]:
        s.release()
    assert path.is_file()  # one student still uses it
    students[-1].release()
    assert not path.exists()


def test_the_data_cache_is_kept_under_its_cap_least_recently_used_first(env, monkeypatch):
    archives = [make_jpeg_archive(env / f"a{i}.tar.gz", seed=i) for i in range(3)]
    one = bytes_under(fetch.unpack_archive(archives[0]))
    monkeypatch.setenv("VIT_EXPLORER_DATA_CACHE_MB", str(2.5 * one / MB))
    first = fetch.unpack_archive(archives[0])
    os.utime(first, (1, 1))
    for p in first.rglob("*"):
        os.utime(p, (1, 1))  # long unused
    second = fetch.unpack_archive(archives[1])
    third = fetch.unpack_archive(archives[2])
    assert second.is_dir() and third.is_dir() and not first.exists()
    assert bytes_under(env / "cache" / "archives") <= 2.5 * one


# ---- fair sharing -----------------------------------------------------------------------------------


def test_threads_per_run_default_to_the_cores_shared_by_the_slots(monkeypatch):
    monkeypatch.delenv("VIT_EXPLORER_TRAIN_THREADS", raising=False)
    from vit_core.threads import training_threads

    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "2")
    assert runs.run_threads() == max(1, training_threads() // 2)
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "64")
    assert runs.run_threads() == 1
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_THREADS", "3")
    assert runs.run_threads() == 3


def test_a_run_is_stopped_at_the_wall_clock_cap_and_cannot_be_resumed(env, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUN_S", "2")
    monkeypatch.setattr(runs, "WATCHDOG_PERIOD_S", 0.1)
    folder = make_image_folder(env / "tiny")
    run = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)))
    t0 = time.monotonic()
    run.start()
    assert run.join(60)
    v = run.view()
    assert v.status == "stopped" and "limit of 2 s per run" in v.message and "VIT_EXPLORER_MAX_RUN_S" in v.message
    assert time.monotonic() - t0 < 120 and v.wall_seconds >= 2 and v.step < v.total_steps and v.checkpoint
    assert not v.can_resume and active_runs() == []


def test_a_paused_run_gives_its_slot_to_the_queue_after_the_release_time(env, monkeypatch):
    """Before: two paused runs held both slots for ever and the third user was refused."""
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUNS", "1")
    monkeypatch.setenv("VIT_EXPLORER_PAUSED_RELEASE_S", "1")
    monkeypatch.setattr(runs, "WATCHDOG_PERIOD_S", 0.1)
    folder = make_image_folder(env / "tiny")
    first = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)))
    first.start()
    wait_for(lambda: first.view().step >= 1, what="a step")
    first.pause()
    waiting = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    waiting.start()
    assert waiting.view().status == "queued" and waiting.view().queue_position == 1
    assert first.join(30)
    v = first.view()
    assert v.status == "stopped" and "gave its training slot" in v.message and v.can_resume
    assert waiting.join(60) and waiting.view().status == "finished"  # started by itself
    first.resume()  # the paused student comes back: continues from the checkpoint
    assert first.view().status in ("loading", "training", "queued")
    first.stop()
    first.join(30)


# ---- the time estimate ------------------------------------------------------------------------------


def test_the_estimate_is_flops_over_one_calibration_never_timing_the_form(monkeypatch):
    calls = []
    real = costs._measure
    monkeypatch.setattr(costs, "_CALIBRATION", {})
    monkeypatch.setattr(costs, "_measure", lambda t, d: calls.append(t) or real(t, d))
    threads = [threading.Thread(target=costs.calibrate, args=(1,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cal = costs.calibrate(1)
    assert len(calls) == 1 and cal.flops_per_s > 1e6 and cal.seconds < 30
    small, big = tiny_config(embed_dim=64, depth=2), tiny_config(embed_dim=128, depth=4)
    assert costs.seconds_per_image(big, cal) / costs.seconds_per_image(small, cal) == pytest.approx(
        costs.forward_flops(big) / costs.forward_flops(small)
    )
    for width in (32, 64, 96, 128):  # form changes: arithmetic only
        costs.seconds_per_image(tiny_config(embed_dim=width), costs.calibrate(1))
    assert len(calls) == 1


def test_forward_flops_counts_the_vit_operations():
    from torch.utils.flop_counter import FlopCounterMode

    from vit_core.model import VisionTransformer

    cfg = tiny_config(embed_dim=64, depth=2, num_heads=4, patch_size=4)
    model = VisionTransformer(cfg.vit_config(10)).eval()
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, 32, 32))
    attention = 2 * 2 * cfg.depth * 65**2 * cfg.embed_dim  # scores and weighted sum (SDPA, not counted by torch)
    assert costs.forward_flops(cfg, 10) == pytest.approx(fc.get_total_flops() + attention, rel=0.01)


# ---- one download at a time ---------------------------------------------------------------------------


def test_five_download_clicks_make_one_download_and_one_temporary_file(env, monkeypatch):
    cache = env / "cache"
    started, release, temps = [], threading.Event(), []

    def slow_download(cache_dir, progress=None, url=None):
        started.append(1)
        tmp = Path(cache_dir) / "cifar-10-python.tar.gz.part.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"x")
        progress(1, 2)
        release.wait(10)
        temps.append(len(list(Path(cache_dir).glob("*.tmp"))))
        tmp.unlink()
        return Path(cache_dir) / "cifar-10-python.tar.gz"

    monkeypatch.setattr(download_job, "download_cifar10", slow_download)
    monkeypatch.setattr(download_job, "prepare_cifar10_archive", lambda a, c: Path(c))
    jobs = [download_job.DownloadJob(cache) for _ in range(5)]
    for j in jobs:
        j.start()
    wait_for(lambda: started, what="the download to start")
    time.sleep(0.3)
    assert [j.view()[:3] for j in jobs] == [("downloading", 1, 2)] * 5  # all show the one download
    release.set()
    assert all(j.join(10) for j in jobs)
    assert len(started) == 1 and temps == [1]
    assert {j.view()[0] for j in jobs} == {"done"}


# ---- the stale-run sweep ---------------------------------------------------------------------------


def test_the_stale_run_sweep_removes_only_folders_the_app_made(env, monkeypatch):
    """Before: pointing the run folder at a shared folder deleted every folder in it older than a day."""
    shared = env / "shared"
    theirs = shared / "someone-elses-project"
    theirs.mkdir(parents=True)
    (theirs / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(shared))
    folder = make_image_folder(env / "tiny")
    old_run = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    old_run.start()
    assert old_run.join(60) and (old_run.out_dir / runs.RUN_MARKER).is_file()
    for p in (theirs, theirs / "thesis.tex", old_run.out_dir, *old_run.out_dir.iterdir()):
        os.utime(p, (1, 1))  # both untouched for decades
    new_run = TrainingRun(tiny_config(epochs=1), DataSource("path", str(folder)))
    new_run.start()
    assert new_run.join(60)
    assert (theirs / "thesis.tex").read_text() == "years of work"
    assert not old_run.out_dir.exists() and new_run.out_dir.is_dir()


# ---- the Train page in a classroom ------------------------------------------------------------------


def test_preset_notes_promise_no_fixed_times_and_the_demo_preset_exists():
    import re

    assert "demo" in runs.APP_PRESETS
    for key, note in runs.PRESET_NOTES.items():
        assert not re.search(r"\d+\s*(s|min|minutes|h|hours)\b", note), (key, note)
        assert runs.BENCHMARKS[key]  # the measured figure and its machine
    assert "on this server now" in runs.preset_summary("demo", 170.0) and "3 min" in runs.preset_summary("demo", 170.0)


def test_cifar10_unpacked_by_one_session_is_found_by_every_new_one(env):
    from vit_core.config import CIFAR10_CLASSES

    root = env / "jpeg"
    for split, n in (("train", 2), ("test", 1)):
        for c in CIFAR10_CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * (i + 1), np.uint8)).save(root / split / c / f"{i:04d}.jpg")
    archive = env / "cifar10_jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(root / split, arcname=split)
    assert sources.cifar10_cached() is None
    sources.load_source(DataSource("path", str(archive)))  # one session uses the JPEG archive
    found = sources.cifar10_cached()  # a new session looks in the cache
    assert found is not None and (found / "train" / "airplane").is_dir()
    info = sources.inspect_source(DataSource("cache"))
    assert info.train_size == 50_000 or info.description.startswith("CIFAR-10")
    train, test = sources.load_source(DataSource("cache"))
    assert len(train) == 20 and len(test) == 10 and train.class_names == sorted(CIFAR10_CLASSES)
    assert "cifar10_jpeg.tar.gz" in sources.ACCEPTED and ".jpg" in sources.ACCEPTED


def test_the_first_data_load_reports_progress(env):
    folder = make_image_folder(env / "tiny", train_per_class=400, test_per_class=10)
    seen = []
    sources.load_source(DataSource("path", str(folder)), on_load=lambda *a: seen.append(a))
    assert ("train images", 1200, 1200) in seen and any(a[0] == "train images" and a[1] < 1200 for a in seen)


def test_stop_returns_control_within_5_s_and_the_final_evaluation_follows(env, monkeypatch):
    folder = make_image_folder(env / "tiny", train_per_class=24, test_per_class=2000)  # a slow final evaluation
    run = TrainingRun(tiny_config(epochs=500), DataSource("path", str(folder)), eval_size=50)
    run.start()
    wait_for(lambda: run.view().step >= 3, timeout=120, what="steps")
    real = runs.evaluate

    def slow_evaluate(*a, **k):
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(runs, "evaluate", slow_evaluate)
    t0 = time.monotonic()
    run.stop()
    wait_for(lambda: run.view().status == "stopped", timeout=5, what="the stop within 5 s")
    v = run.view()
    assert time.monotonic() - t0 < 5 and v.final_progress is not None and v.final is None
    assert not v.can_resume  # not while the evaluation runs
    assert run.join(60)
    v = run.view()
    assert v.final is not None and v.final_progress is None and v.checkpoint.is_file() and v.can_resume


def test_the_time_left_says_it_is_measuring_at_the_first_steps():
    from ui.training.live import ordinal, time_left
    from vit_core.runs import RunView

    v = RunView("x", "training", "", "", tiny_config(), "", Path("."), step=0, total_steps=100)
    assert "measuring" in time_left(v)
    v.step, v.images_per_s, v.eta_s = 50, 100.0, 240.0
    assert time_left(v) == " · about 4 min left"
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 22)] == ["1st", "2nd", "3rd", "4th", "11th", "12th", "22nd"]
