"""The Ray run backend (vit_core.ray_runs, vit_core.run_backend) against the in-process runner.

A local Ray instance (2 CPUs, 2 training slots, no dashboard) serves the whole module. The same
tiny training goes through both backends and must give the same numbers; pause, resume and stop
work through the actor; a killed actor ends its run with a message and no half-written file; the
slot resource, not a loop of ours, queues the third run; the caps reach the actor; the Train page
drives a Ray run. The queue, owner and page tests take longer (several actors, or AppTest) and are
marked slow: python -m pytest -q tests/test_ray_backend.py -m "slow or not slow".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ray = pytest.importorskip("ray")

from tests._tiny_data import make_image_folder, tiny_config, wait_for  # noqa: E402
from vit_core import ray_runs, run_backend, runs  # noqa: E402
from vit_core.ray_runs import SLOT_RESOURCE, RayRun, RunBackendError  # noqa: E402
from vit_core.runs import RunLimitError, TrainingRun  # noqa: E402
from vit_core.sources import DataSource  # noqa: E402

SLOTS = 2


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        address="local",  # a new instance, even where `ray start` made one on this machine
        num_cpus=2,
        resources={SLOT_RESOURCE: SLOTS},
        include_dashboard=False,
        namespace="vit-explorer-test",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def env(tmp_path, monkeypatch, cluster):
    """Run folders and caches in tmp_path, one torch thread on both sides, no grace period."""
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("VIT_EXPLORER_RUN_GRACE_S", "0")
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_THREADS", "1")
    monkeypatch.setenv(ray_runs.RUN_CPUS_ENV, "1")
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS", raising=False)
    monkeypatch.delenv(ray_runs.RAY_ADDRESS_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made: list = []
    yield made
    for run in made:
        run.stop()
    for run in made:
        run.join(60)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "tiny")


def start(made: list, monkeypatch, backend: str, cfg, folder, **options):
    """A run started through run_backend.start_run with the backend chosen by the setting, as the app does."""
    if backend == "ray":
        monkeypatch.setenv(ray_runs.RAY_ADDRESS_ENV, "local")  # Ray is initialised: connect() keeps it
    else:
        monkeypatch.delenv(ray_runs.RAY_ADDRESS_ENV, raising=False)
    run = run_backend.start_run(cfg, DataSource("path", str(folder)), name="tiny run", **options)
    made.append(run)
    assert isinstance(run, RayRun if backend == "ray" else TrainingRun)
    return run


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def leftovers(folder) -> list[str]:
    """Files of a run folder other than its marker."""
    return sorted(p.name for p in folder.iterdir() if p.name != runs.RUN_MARKER)


# ---- the same training through both backends ------------------------------------------------


def test_same_run_through_both_backends_gives_the_same_metrics_model_and_file(env, monkeypatch, folder):
    cfg = tiny_config(epochs=3)  # 9 steps per epoch -> 27 steps, an evaluation per epoch
    local = start(env, monkeypatch, "local", cfg, folder, snapshots=3)
    remote = start(env, monkeypatch, "ray", cfg, folder, snapshots=3)
    assert local.join(60) and remote.join(90)
    a, b = local.view(), remote.view()
    assert a.status == b.status == "finished", (a.message, b.message)
    assert b.steps == a.steps == list(range(1, 28))
    assert b.loss == pytest.approx(a.loss, abs=1e-5) and b.acc == pytest.approx(a.acc, abs=1e-6)
    assert b.lr == pytest.approx(a.lr, rel=1e-9)
    assert [e.step for e in b.evals] == [e.step for e in a.evals] == [9, 18, 27]
    assert [e.acc for e in b.evals] == pytest.approx([e.acc for e in a.evals], abs=1e-6)
    assert [e.loss for e in b.evals] == pytest.approx([e.loss for e in a.evals], abs=1e-5)
    assert b.final.acc == pytest.approx(a.final.acc) and b.final.confusion == a.final.confusion
    assert b.mistakes == a.mistakes
    for field in ("total_steps", "params", "tokens", "train_size", "test_size", "eval_size", "class_names"):
        assert getattr(b, field) == getattr(a, field), field
    assert "test accuracy" in b.message and b.message == a.message
    # The snapshots came across: the untrained model's picture is the same on both sides.
    assert b.snapshots[0].step == a.snapshots[0].step == 0 and b.snapshots[-1].step == 27
    assert np.allclose(b.snapshots[0].position_similarity, a.snapshots[0].position_similarity)
    # "Use this model" and the download: the checkpoint came back as bytes into this machine's run folder.
    assert b.checkpoint == remote.out_dir / "model.safetensors" and b.checkpoint.is_file()
    assert b.out_dir != a.out_dir and not b.can_resume
    assert same_weights(weights(remote.export_model()), weights(local.export_model()), atol=1e-5)
    assert remote.export_model().cfg.name == "tiny run" and not remote.export_model().training
    fa, fb = load_file(a.checkpoint), load_file(b.checkpoint)
    assert same_weights(fa, fb, atol=1e-5)
    assert remote.test_image(3).shape == (32, 32, 3)
    assert not remote.alive and remote.actor is None  # the actor, and its slot, were let go
    assert leftovers(remote.out_dir) == ["last.pt", "model.safetensors"]


def test_pause_stop_resume_through_the_actor_equals_an_uninterrupted_run(env, monkeypatch, folder):
    cfg = tiny_config(epochs=12)  # 108 steps of milliseconds
    straight = start(env, monkeypatch, "local", cfg, folder, snapshots=4)  # the reference, meanwhile
    run = start(env, monkeypatch, "ray", cfg, folder, snapshots=4)
    wait_for(lambda: run.view().status != "queued", timeout=60, what="the actor to be placed")
    run.pause()  # while the data goes over, or in the first steps: the actor's loop holds early
    wait_for(lambda: run.view().held, timeout=60, what="the actor's loop to hold")
    held_at = run.view().step
    time.sleep(0.8)
    v = run.view()
    assert v.status == "paused" and v.held and v.step == held_at < 108
    run.stop()  # while paused: stops before the next step
    assert run.view().status in ("stopping", "stopped")
    assert run.join(60)
    v = run.view()
    assert v.status == "stopped" and v.step == held_at, v.message
    assert "Stopped at step" in v.message and v.can_resume and v.final is not None and v.final.step == held_at
    assert v.final_progress is None and v.checkpoint.is_file() and (run.out_dir / "last.pt").is_file()
    assert v.steps == list(range(1, held_at + 1)) and v.snapshots[-1].step == held_at
    assert run.actor is None  # the slot was given back while stopped

    run.resume()  # a new actor, from last.pt sent through the object store
    assert run.join(90)
    v = run.view()
    assert v.status == "finished", v.message
    assert v.steps == list(range(1, 109))  # no step lost or repeated over the stop
    snap_steps = [s.step for s in v.snapshots]
    assert snap_steps == sorted(set(snap_steps)) and snap_steps[-1] == 108

    assert straight.join(90)
    w = straight.view()
    assert w.status == "finished"
    assert v.loss == pytest.approx(w.loss, abs=1e-4) and v.final.acc == pytest.approx(w.final.acc)
    assert same_weights(weights(run.export_model()), weights(straight.export_model()), atol=1e-4)


def test_unpause_and_a_killed_actor_ends_the_run_with_a_message_and_no_half_written_file(env, monkeypatch, folder):
    run = start(env, monkeypatch, "ray", tiny_config(epochs=400), folder)
    wait_for(lambda: run.view().step >= 3, timeout=60, what="three steps on the actor")
    run.pause()
    wait_for(lambda: run.view().held, timeout=30, what="the actor's loop to hold")
    held_at = run.view().step
    time.sleep(0.5)
    assert run.view().step == held_at
    run.unpause()
    assert run.view().status == "training"
    wait_for(lambda: run.view().step > held_at + 3, timeout=30, what="steps after the unpause")
    ray.kill(run.actor)
    assert run.join(60)
    v = run.view()
    assert v.status == "failed" and v.done
    assert "ended unexpectedly" in v.message and f"step {v.step}" in v.message
    assert v.checkpoint is None and not v.can_resume and v.final_progress is None
    assert leftovers(run.out_dir) == []  # nothing arrived, nothing half-written
    with pytest.raises(RuntimeError, match="no model"):
        run.export_model()
    with pytest.raises(RuntimeError):
        run.resume()


@pytest.mark.slow
def test_the_slot_resource_queues_the_third_run_and_a_queued_run_can_leave(env, monkeypatch, folder):
    monkeypatch.setenv(ray_runs.RUN_CPUS_ENV, "0.5")  # CPUs for three: only the slots can hold one back
    cfg = tiny_config(epochs=400)
    first = start(env, monkeypatch, "ray", cfg, folder)
    second = start(env, monkeypatch, "ray", cfg, folder)
    wait_for(lambda: first.view().step > 0 and second.view().step > 0, timeout=60, what="two runs training")
    third = start(env, monkeypatch, "ray", cfg, folder)
    fourth = start(env, monkeypatch, "ray", cfg, folder)
    time.sleep(1.5)
    v3, v4 = third.view(), fourth.view()
    assert v3.status == v4.status == "queued" and (v3.queue_position, v4.queue_position) == (1, 2)
    assert ray_runs.waiting_runs() == [third, fourth]
    fourth.stop()  # leaves the queue at once
    assert fourth.view().status == "stopped" and "Left the queue" in fourth.view().message
    assert fourth.join(30) and fourth.actor is None
    first.stop()  # its slot goes to the third
    wait_for(lambda: third.view().step > 0, timeout=60, what="the queued run to start")
    assert third.view().queue_position == 0 and ray_runs.waiting_runs() == []
    assert first.join(60) and first.view().status == "stopped"


# ---- the caps reach the actor, settings fail clearly ----------------------------------------


def test_caps_are_checked_before_ray_and_enforced_in_the_actor(env, monkeypatch, folder):
    monkeypatch.setenv("VIT_EXPLORER_MAX_EPOCHS", "5")
    monkeypatch.setenv(ray_runs.RAY_ADDRESS_ENV, "local")
    with pytest.raises(RunLimitError, match="epochs"):
        run_backend.start_run(tiny_config(epochs=10), DataSource("path", str(folder)))
    assert ray_runs.waiting_runs() == []
    monkeypatch.delenv("VIT_EXPLORER_MAX_EPOCHS")
    # The wall-clock cap travels with the actor's settings and stops the run there.
    monkeypatch.setenv("VIT_EXPLORER_MAX_RUN_S", "2")
    run = start(env, monkeypatch, "ray", tiny_config(epochs=400), folder)
    assert run.join(90)
    v = run.view()
    assert v.status == "stopped" and "VIT_EXPLORER_MAX_RUN_S" in v.message, v.message
    assert v.step < v.total_steps and v.wall_seconds >= 2
    assert not v.can_resume  # it used its time
    with pytest.raises(RuntimeError):
        run.resume()


@pytest.mark.slow
def test_an_owner_that_went_away_ends_the_actor_run(env, monkeypatch, folder):
    run = start(env, monkeypatch, "ray", tiny_config(epochs=400), folder)
    wait_for(lambda: run.view().step > 0, timeout=60, what="training on the actor")
    run.release()  # grace 0: stopped now, without the final evaluation
    assert run.join(60)
    v = run.view()
    assert v.status == "stopped" and "went away" in v.message
    assert not v.can_resume and v.final is None and v.snapshots == []


def test_settings_choose_the_backend_and_bad_ones_say_what_to_do(monkeypatch):
    assert (
        run_backend.backend_name({}) == "local"
        and run_backend.backend_name({"VIT_EXPLORER_RAY_ADDRESS": " "}) == "local"
    )
    assert run_backend.backend_name({"VIT_EXPLORER_RAY_ADDRESS": "auto"}) == "ray"
    assert ray_runs.run_resources({}) == (1.0, 0.0)
    assert ray_runs.run_resources({"VIT_EXPLORER_RAY_RUN_CPUS": "2", "VIT_EXPLORER_RAY_RUN_GPUS": "0.5"}) == (2.0, 0.5)
    for bad in (
        {"VIT_EXPLORER_RAY_RUN_CPUS": "0"},
        {"VIT_EXPLORER_RAY_RUN_CPUS": "two"},
        {"VIT_EXPLORER_RAY_RUN_GPUS": "-1"},
    ):
        with pytest.raises(RunBackendError, match="VIT_EXPLORER_RAY_RUN"):
            ray_runs.run_resources(bad)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(RunBackendError, match="requirements-scale.txt"):
        ray_runs.connect("auto")


def test_a_cluster_without_training_slots_is_refused_with_the_command_to_fix_it(cluster, monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(RunBackendError, match=f"no '{SLOT_RESOURCE}'.*ray start"):
        ray_runs.connect("auto")


def test_a_request_the_cluster_can_never_grant_is_refused_at_start(env, monkeypatch, folder):
    monkeypatch.setenv(ray_runs.RUN_GPUS_ENV, "1")  # the test cluster has no GPU
    monkeypatch.setenv(ray_runs.RAY_ADDRESS_ENV, "local")
    with pytest.raises(RunBackendError, match="no run could start"):
        run_backend.start_run(tiny_config(), DataSource("path", str(folder)))
    assert ray_runs.waiting_runs() == []


@pytest.mark.slow
def test_the_train_page_drives_a_ray_run_as_it_drives_a_local_one(env, monkeypatch, tmp_path):
    from tests.test_train_page import open_page, poll, progress_text, set_tiny, texts

    monkeypatch.setenv("VIT_EXPLORER_DATA", str(make_image_folder(tmp_path / "data")))
    monkeypatch.setenv(ray_runs.RAY_ADDRESS_ENV, "local")
    at = open_page()
    total = 360
    set_tiny(at, epochs=total // 9)
    at.button(key="train_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    run = at.session_state["train_run"]
    env.append(run)
    assert isinstance(run, RayRun)
    poll(at, lambda: run.view().step > 0 and "step" in progress_text(at), timeout=90, what="steps on the page")
    at.button(key="train_pause").click().run()
    wait_for(lambda: run.view().held, timeout=30, what="the actor's loop to hold")
    held_at = run.view().step
    at.run()
    assert progress_text(at).startswith("Paused") and at.button(key="train_unpause")
    at.button(key="train_stop").click().run()
    assert run.join(60)
    poll(at, lambda: bool(at.warning), what="the stopped run's results")
    assert f"Stopped at step {held_at} of {total}" in texts(at, "warning")
    at.button(key="train_resume").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert run.join(120)
    poll(at, lambda: bool(at.success), what="the finished run's results")
    v = run.view()
    assert v.status == "finished" and v.steps == list(range(1, total + 1))
    assert f"Finished {total} steps: test accuracy" in texts(at, "success")
    assert at.get("download_button")  # the checkpoint that came back through the object store
    at.button(key="train_use").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert "is now selected" in texts(at, "info")


def test_local_ray_started_from_a_thread_that_ends_outlives_it_and_finds_vit_core(tmp_path):
    # A Streamlit callback runs on a script thread that ends after each run; Ray's local processes
    # die with the thread that started them unless connect() starts them on a thread of its own.
    script = (
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from vit_core.ray_runs import cluster_slots, connect\n"
        "t = threading.Thread(target=connect, args=('local',)); t.start(); t.join()\n"
        "time.sleep(3)\n"
        "print('slots', cluster_slots(), flush=True)\n"
        "import ray\n"  # and its workers import vit_core, though this process runs in another folder
        "from vit_core.ray_runs import SLOT_RESOURCE, _actor_class\n"
        "a = _actor_class().options(num_cpus=1, resources={SLOT_RESOURCE: 1}).remote('x')\n"
        "print('placed', bool(ray.get(a.ready.remote(), timeout=120)), flush=True)\n"
    )
    env = {**os.environ, "VIT_EXPLORER_MAX_RUNS": "3", "RAY_ADDRESS": ""}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path
    )
    assert "slots 3.0" in out.stdout and "placed True" in out.stdout, out.stdout + out.stderr[-2000:]
