"""Two app replicas behind nginx on loopback (deploy/serve_replicas.py), driven by a real browser.

The config tests check what the template promises (websocket headers, long timeouts, a sticky
upstream, every field filled) and that nginx itself accepts it. The browser test starts two
replicas and nginx, opens the Overview, Attention and Prediction pages through the proxy in
Chromium, and checks stickiness: every response of the browser's session names one replica
(nginx's `X-Upstream` header), the websocket of the session went to that replica too (nginx's
access log), requests without the cookie are spread over both replicas, and requests with a
cookie all go to one. Skipped when nginx (or Chromium) is not installed; CI installs both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.serve_replicas import (
    STICKY,
    Served,
    find_nginx,
    render_config,
    replica_command,
    serve,
    streamlit_upload_mb,
)
from tests._browser_kit import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    go_to,
    idle,
    import_playwright,
    skip_without_browser,
)

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
PAGES = [
    ("Overview", "How a Vision Transformer sees an image"),
    ("Attention", "Step 4: attention, who looks at whom"),
    ("Prediction", "Step 5: the answer"),
]


# ---- the config ----


def test_the_config_passes_websockets_through_and_is_sticky(tmp_path):
    conf = render_config(tmp_path, "127.0.0.1:8500", ["127.0.0.1:8501", "127.0.0.1:8502"])
    assert "@@" not in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_http_version 1.1;" in conf
    assert (
        re.search(r"proxy_read_timeout (\d+)s;", conf)
        and int(re.search(r"proxy_read_timeout (\d+)s;", conf)[1]) >= 3600
    )
    upstream = re.search(r"upstream vit_explorer \{(.*?)\}", conf, re.S)[1]
    assert STICKY["cookie"] in upstream
    assert re.findall(r"server (\S+);", upstream) == ["127.0.0.1:8501", "127.0.0.1:8502"]
    assert "listen 127.0.0.1:8500;" in conf
    assert f"pid {tmp_path.resolve()}/nginx.pid;" in conf and "daemon off;" in conf
    assert f"client_max_body_size {streamlit_upload_mb() + 16}m;" in conf  # uploads the app accepts get through
    assert STICKY["ip"] in render_config(tmp_path, "127.0.0.1:8500", ["127.0.0.1:8501"], sticky="ip")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"upstreams": []}, "at least one replica"),
        ({"sticky": "round-robin"}, "sticky must be one of cookie, ip"),
        ({"listen": "8500"}, "'8500' is not HOST:PORT"),
        ({"upstreams": ["127.0.0.1:8501; evil"]}, "is not HOST:PORT"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, kwargs, message):
    args = {"run_dir": tmp_path, "listen": "127.0.0.1:8500", "upstreams": ["127.0.0.1:8501"], **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        render_config(**args)


def test_replicas_run_with_the_classroom_settings_on_loopback():
    cmd = replica_command(8601)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8601"
    assert "--client.showErrorDetails=none" in cmd
    assert "--client.showErrorDetails=none" not in replica_command(8601, public=False)


@needs_nginx
@pytest.mark.parametrize("sticky", sorted(STICKY))
def test_nginx_accepts_the_config_as_an_ordinary_process(tmp_path, sticky):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_config(tmp_path, f"127.0.0.1:{free_port()}", ["127.0.0.1:8501", "127.0.0.1:8502"], sticky))
    r = subprocess.run(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"), "-t"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr


# ---- two replicas in a real browser ----


@pytest.fixture(scope="module")
def served():
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    if skip_without_browser():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run_dir = (
        ARTIFACTS / "replicas"
    )  # the replicas' logs, nginx's config and access log: kept for a look after the test
    shutil.rmtree(run_dir, ignore_errors=True)
    with serve(
        [free_port(), free_port()], f"127.0.0.1:{free_port()}", run_dir=run_dir, env={"HF_HUB_OFFLINE": "1"}, log=print
    ) as s:
        yield s


def _upstreams(url: str, n: int, cookie: str | None = None) -> list[str]:
    """The replica that answered each of n health checks."""
    seen = []
    for _ in range(n):
        req = urllib.request.Request(
            url + "/_stcore/health", headers={"Cookie": f"vit_replica={cookie}"} if cookie else {}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            seen.append(r.headers["X-Upstream"])
    return seen


@pytest.mark.browser
def test_requests_without_the_cookie_spread_and_with_it_stick(served: Served):
    assert set(_upstreams(served.url, 24)) == set(served.upstreams)  # both replicas serve (2^-23 to fail by chance)
    for cookie in ("a-student", "another-student"):
        assert len(set(_upstreams(served.url, 12, cookie))) == 1


@pytest.mark.browser
def test_a_browser_session_works_through_the_proxy_and_stays_on_one_replica(served: Served):
    playwright = import_playwright()
    answered: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.on("response", lambda r: r.url.startswith(served.url) and answered.append(r.headers.get("x-upstream", "")))
        pg.goto(served.url)
        idle(pg)
        for label, title in PAGES:
            go_to(pg, label)
            assert pg.locator("h1").first.inner_text().strip() == title
            assert pg.locator('[data-testid="stException"]').count() == 0, label
            assert "Prediction:" in pg.locator('[data-testid="stAlert"]').first.inner_text()
        sidebar = pg.locator('[data-testid="stSidebar"]').inner_text()
        assert re.search(r"Model runs on: CPU \(\d+ threads?\)", sidebar), sidebar
        assert "Classroom mode" in sidebar  # the replicas run with the classroom settings
        cookie = next(c["value"] for c in context.cookies() if c["name"] == "vit_replica")
        pg.screenshot(path=str(ARTIFACTS / "replicas_prediction.png"))
        context.close()
        browser.close()
    assert answered and "" not in answered
    assert len(set(answered)) == 1, set(answered)  # every response of the session: one replica
    replica = answered[0]
    assert replica in served.upstreams
    # the session's websocket (logged by nginx when it closes) went to the same replica
    access: Path = served.run_dir / "access.log"
    deadline = time.time() + 10
    while not (streams := _stream_lines(access, cookie)) and time.time() < deadline:
        time.sleep(0.3)
    assert streams, access.read_text()[-2000:]
    assert {line.split(" -> ")[1].split()[0] for line in streams} == {replica}
    assert all('" 101 ->' in line for line in streams)  # switched to the websocket protocol


def _stream_lines(access: Path, cookie: str) -> list[str]:
    return [ln for ln in access.read_text().splitlines() if "/_stcore/stream" in ln and f"cookie={cookie} " in ln]
