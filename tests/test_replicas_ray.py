"""Two app replicas behind nginx, training on a Ray cluster: a run started in a browser through the proxy.

The README's "More than one machine" recipe on one machine, loopback only: the test starts a Ray
head with `ray start --head` (2 CPUs, 2 `vit_explorer_run_slot`, no dashboard, its own temp
folder and ports), then two replicas behind nginx (deploy/serve_replicas.py) with
`VIT_EXPLORER_RAY_ADDRESS=auto` (and `RAY_ADDRESS` naming this head, so `auto` cannot find
another test's cluster). In Chromium, through the proxy, it uploads a tiny image archive made
here on the Train page, trains the Demo preset as it comes (a few steps on 72 images), and
checks that the run was a Ray actor: its folder was made in the Ray node's temp folder (not the
replica's) and removed once its files came back, the cluster holds one ended `RunActor`, and the
checkpoint is in the replica's run folder. Then "Use this model", and the Prediction page gives
the answer vit_core computes from that checkpoint. The whole session stays on one replica.

Skipped when nginx, ray or Chromium is missing. Stops only the Ray processes it started (their
process group), never `ray stop`, which would end every Ray instance of the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.serve_replicas import Served, find_nginx, serve
from tests._browser_kit import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    expected_prediction,
    free_port,
    go_to,
    idle,
    import_playwright,
    parse_prediction,
    skip_without_browser,
)
from tests._tiny_data import make_jpeg_archive

RAY = shutil.which("ray")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install -y nginx)"),
    pytest.mark.skipif(RAY is None, reason="ray is not installed (pip install -r requirements-scale.txt)"),
    pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]
SLOTS = 2
ACTOR_FOLDERS = "vit-explorer-ray-runs"  # vit_core.ray_runs.RunActor's folders, under its node's temp folder
MAIN_TEXT = "() => (document.querySelector('[data-testid=\"stMain\"]') || {innerText: ''}).innerText"
# What a driver sees of the cluster's actors (GCS; `ray list actors` needs the dashboard, which is off)
LIST_ACTORS = """
import json, ray
from ray._private import state
ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
print(json.dumps([{"class": a["ActorClassName"], "state": str(a["State"])} for a in state.actors().values()]))
"""


@dataclass
class RayHead:
    address: str  # the GCS address, host:port
    tmp: Path  # the node's TMPDIR (its workers' tempfile.gettempdir())
    auth: dict[str, str]  # what a process connecting to it needs in its environment


def _auth_mode() -> str:
    """'token' where a Ray token is at hand (Ray 2.60's `ray start` then protects the head with it), else 'disabled'.

    Set explicitly on both sides: Ray enables the token by itself only for `ray.init("auto")`
    without `RAY_ADDRESS`, and the replicas here are given the head's address in `RAY_ADDRESS`.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return "token"
    return "token" if (Path.home() / ".ray" / "auth_token").is_file() else "disabled"


def _stop_group(pgid: int) -> None:
    """End the Ray processes started by our `ray start` (its own session: one process group)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.3)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    root = Path(tempfile.mkdtemp(prefix="vrh", dir="/tmp"))  # short: Ray's socket paths live under it
    (root / "node").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    auth = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE") or _auth_mode()}
    env.update(auth, TMPDIR=str(root / "node"))
    cmd = [RAY, "start", "--head", "--num-cpus", "2", "--resources", json.dumps({"vit_explorer_run_slot": SLOTS})]
    cmd += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(root / "ray")]
    cmd += ["--port", str(free_port()), "--ray-client-server-port", str(free_port())]
    cmd += ["--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=120)
        (ARTIFACTS / "replicas_ray_head.log").parent.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "replicas_ray_head.log").write_text(out)
        found = re.search(r"ray start --address='([^']+)'", out)
        assert proc.returncode == 0 and found, f"ray start failed:\n{out[-2000:]}"
        yield RayHead(found[1], root / "node", auth)
    finally:
        _stop_group(proc.pid)  # `ray start` ran as the leader of a new session; its daemons kept the group
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def served(ray_head: RayHead, tmp_path_factory) -> Iterator[tuple[Served, Path]]:
    tmp = tmp_path_factory.mktemp("replicas_ray")
    runs_dir = tmp / "runs"
    env = {
        "HF_HUB_OFFLINE": "1",
        "VIT_EXPLORER_RAY_ADDRESS": "auto",  # the README's setting for a machine that ran `ray start`
        "RAY_ADDRESS": ray_head.address,  # ... and the cluster `auto` means: this test's head
        **ray_head.auth,
        "VIT_EXPLORER_RAY_RUN_CPUS": "1",
        "VIT_EXPLORER_DATA": str(tmp / "cache"),  # no CIFAR-10 here: the data is the uploaded archive
        "VIT_EXPLORER_TRAIN_DIR": str(runs_dir),
        "VIT_EXPLORER_RUN_GRACE_S": "0",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run_dir = ARTIFACTS / "replicas_ray"  # the replicas' logs, nginx's config and access log
    shutil.rmtree(run_dir, ignore_errors=True)
    with serve([free_port(), free_port()], f"127.0.0.1:{free_port()}", run_dir=run_dir, env=env, log=print) as s:
        yield s, runs_dir


def _actors(head: RayHead) -> list[dict]:
    env = {**os.environ, "RAY_ADDRESS": head.address, **head.auth}
    r = subprocess.run([sys.executable, "-c", LIST_ACTORS], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_training_run_through_the_proxy_is_a_ray_actor_and_its_model_is_used(served, ray_head, tmp_path):
    s, runs_dir = served
    playwright = import_playwright()
    archive = make_jpeg_archive(tmp_path / "tiny.tar.gz")  # 3 classes, 72 training and 24 test images
    assert not (ray_head.tmp / ACTOR_FOLDERS).exists()
    answered: list[str] = []
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        pg = context.new_page()
        pg.on("response", lambda r: r.url.startswith(s.url) and answered.append(r.headers.get("x-upstream", "")))
        pg.on("pageerror", lambda e: errors.append(str(e)))
        try:
            pg.goto(s.url)
            idle(pg)
            go_to(pg, "Train")
            main = pg.locator('[data-testid="stMain"]')
            pg.get_by_text("Upload an archive", exact=True).click()
            idle(pg, 0.5)
            main.locator('input[type="file"]').set_input_files(str(archive))  # through nginx to the replica
            pg.wait_for_function(f"() => ({MAIN_TEXT})().includes('72 training and 24 test images')", timeout=60_000)
            idle(pg, 0.5)
            # the Demo preset as it comes (patch 4, D 64, 2 blocks, 2 epochs): a few steps on 72 images
            steps = re.search(r"Optimiser steps\s*(\d+)", main.inner_text())
            assert steps and 0 < int(steps[1]) < 100, main.inner_text()[-1500:]
            steps = int(steps[1])
            pg.get_by_role("button", name=re.compile("Start training")).click()
            # a Ray worker starts, imports torch and gets vit_core and the data: tens of seconds here
            pg.wait_for_function(  # the end, or the page's message that Ray could not be used
                f"() => /Finished {steps} steps|Ray cluster/.test(({MAIN_TEXT})())", timeout=240_000
            )
            assert f"Finished {steps} steps" in main.inner_text(), main.inner_text()[-1500:]
            idle(pg, 1.0)
            assert pg.locator('[data-testid="stException"]').count() == 0
            assert "Test accuracy" in main.inner_text()
            pg.screenshot(path=str(ARTIFACTS / "replicas_ray_trained.png"))

            pg.get_by_role("button", name=re.compile("Use this model")).click()
            idle(pg)
            picker = pg.get_by_role("combobox", name="Model", exact=True)
            assert picker.input_value().startswith("Trained this session: ViT P4 D64 L2")
            go_to(pg, "Prediction")
            assert pg.locator("h1").first.inner_text().strip() == "Step 5: the answer"
            assert pg.locator('[data-testid="stException"]').count() == 0
            assert picker.input_value().startswith("Trained this session: ViT P4 D64 L2")
            shown = parse_prediction(pg.locator('[data-testid="stAlert"]').first.inner_text())
            assert shown["model"].startswith("Trained this session: ViT P4 D64 L2"), shown
            assert shown["image"] == "CIFAR-10: cat", shown
            assert "grid 8x8" in pg.locator('[data-testid="stSidebar"]').inner_text()
            pg.screenshot(path=str(ARTIFACTS / "replicas_ray_prediction.png"))
        except Exception:
            pg.screenshot(path=str(ARTIFACTS / "replicas_ray_failed.png"), full_page=True)
            raise
        finally:
            context.close()
            browser.close()
    assert errors == []
    assert answered and "" not in answered
    assert len(set(answered)) == 1, set(answered)  # the whole session, run included, on one replica

    # The run trained in a Ray worker: its folder was made under the Ray node's TMPDIR (the
    # replicas have another), and removed once model.safetensors and last.pt went back as bytes.
    actor_folders = ray_head.tmp / ACTOR_FOLDERS
    assert actor_folders.is_dir(), "no RunActor folder on the Ray node: the run did not train in a Ray worker"
    assert list(actor_folders.iterdir()) == []
    # ... the cluster knows its actor (ended when the run ended; its slot is free again) ...
    actors = [a for a in _actors(ray_head) if a["class"].endswith("RunActor")]
    assert len(actors) == 1 and "DEAD" in actors[0]["state"], actors
    # ... and the files came back to the replica's run folder, the only place the app reads them
    folders = [d for d in runs_dir.iterdir() if (d / "model.safetensors").is_file()]
    assert len(folders) == 1 and (folders[0] / "last.pt").is_file(), sorted(runs_dir.iterdir())
    # the Prediction page answered with that checkpoint: the same as vit_core computes from the file
    from vit_core import load_checkpoint

    cat = (ROOT / "assets" / "samples" / "cifar10" / "cat.jpg").read_bytes()
    assert shown["pred"] == expected_prediction(load_checkpoint(folders[0] / "model.safetensors"), cat), shown
