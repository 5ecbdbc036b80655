"""Serve ViT Explorer as N Streamlit replicas behind nginx: sticky sessions, websockets, one address.

    python deploy/serve_replicas.py --replicas 4 --port 8500                # the proxy on loopback
    python deploy/serve_replicas.py --replicas 4 --port 80 --address 0.0.0.0   # serve the room

Starts N `streamlit run app.py` processes on loopback ports (8501, 8502, ... by default) with
the classroom settings (`VIT_EXPLORER_PUBLIC=1`, no error details, no file watcher), waits until
each answers its health check, then runs nginx in the foreground as the calling user, with a
config made from `deploy/nginx-vit-explorer.conf` in a run folder of its own (`-p <dir> -c
<dir>/nginx.conf`: pid, logs and temporary files all there; nothing under /etc or /var).
Replicas started on other machines join with `--remote HOST:PORT` (start them there with the
command `--print-replica-command` prints). Ctrl-C (or SIGTERM) stops nginx and every replica.

Each replica is a separate process with its own memory: a browser session, its uploads and
an in-process training run live on the replica that opened it, which is why the proxy is
sticky (a cookie by default; `--sticky ip` for `ip_hash`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).with_name("nginx-vit-explorer.conf")
STICKY = {"cookie": "hash $vit_client consistent;", "ip": "ip_hash;"}
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
START_TIMEOUT_S = 120.0  # a replica imports torch and the app; on a busy 2-core machine that takes a while


class ServeError(RuntimeError):
    """Something the operator has to fix: no nginx, a port in use, a replica that did not start."""


def find_nginx() -> str | None:
    """The nginx binary (on PATH, or where Debian and the nginx.org packages put it), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def streamlit_upload_mb() -> int:
    """Streamlit's `server.maxUploadSize` from .streamlit/config.toml (MB; Streamlit's default 200)."""
    try:
        config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
        return int(config.get("server", {}).get("maxUploadSize", 200))
    except (OSError, ValueError, tomllib.TOMLDecodeError):
        return 200


def render_config(
    run_dir: str | Path,
    listen: str,
    upstreams: Sequence[str],
    sticky: str = "cookie",
    max_body_mb: int | None = None,
    template: str | None = None,
) -> str:
    """The nginx config: the template with its @@FIELDS@@ filled in.

    Args:
        run_dir: a folder nginx may write (pid, logs, temporary files).
        listen: the proxy's address, "127.0.0.1:8500".
        upstreams: the replicas, "127.0.0.1:8501", ...
        sticky: "cookie" (hash on a cookie nginx sets) or "ip" (ip_hash).
        max_body_mb: the largest upload; Streamlit's `server.maxUploadSize` + 16 MB when None.

    Raises:
        ValueError: no upstream, an unknown `sticky`, or an address that is not host:port.
    """
    if not upstreams:
        raise ValueError("nginx needs at least one replica to send requests to")
    if sticky not in STICKY:
        raise ValueError(f"sticky must be one of {', '.join(STICKY)}, not {sticky!r}")
    for addr in (listen, *upstreams):
        if not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", addr):
            raise ValueError(f"{addr!r} is not HOST:PORT")
    fields = {
        "RUN_DIR": str(Path(run_dir).resolve()),
        "LISTEN": listen,
        "UPSTREAMS": "\n        ".join(f"server {u};" for u in upstreams),
        "STICKY": STICKY[sticky],
        "MAX_BODY_MB": str(max_body_mb if max_body_mb is not None else streamlit_upload_mb() + 16),
    }
    text = TEMPLATE.read_text() if template is None else template
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))  # the header documents the fields
    for name, value in fields.items():
        body = body.replace(f"@@{name}@@", value)
    left = re.findall(r"@@\w+@@", body)
    if left:
        raise ValueError(f"the nginx template has fields this launcher does not fill: {sorted(set(left))}")
    return body.lstrip("\n")


def replica_command(port: int, address: str = "127.0.0.1", public: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The `streamlit run app.py` of one replica."""
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.address", address, "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    cmd += ["--server.fileWatcherType", "none"]  # a served copy does not reload on file changes
    if public:
        cmd += ["--client.showErrorDetails=none"]
    return [*cmd, *extra]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Served:
    """What `serve` started: the proxy's URL, the replicas' addresses, the run folder with the logs."""

    url: str
    upstreams: list[str]
    run_dir: Path
    replicas: list[subprocess.Popen] = field(default_factory=list)
    nginx: subprocess.Popen | None = None

    def replica_log(self, i: int) -> Path:
        return self.run_dir / f"replica-{i}.log"


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(
    ports: Sequence[int],
    listen: str = "127.0.0.1:8500",
    remote: Sequence[str] = (),
    sticky: str = "cookie",
    run_dir: str | Path | None = None,
    public: bool = True,
    streamlit_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    nginx: str | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[Served]:
    """Start a replica on each of `ports` (loopback), then nginx on `listen`; stop them all on exit.

    Raises:
        ServeError: no nginx, a replica that did not start (its log says why), a config nginx refuses.
    """
    nginx = nginx or find_nginx()
    if nginx is None:
        raise ServeError("nginx is not installed (Debian/Ubuntu: sudo apt-get install nginx).")
    if not ports and not remote:
        raise ServeError("nothing to serve: give at least one replica port or --remote address")
    run = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="vit-explorer-proxy-"))
    run.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # nginx's workers then run as "nobody": let them reach their temp folders in here
        run.chmod(0o711)
    upstreams = [f"127.0.0.1:{p}" for p in ports] + list(remote)
    served = Served(f"http://{listen}", upstreams, run)
    full_env = {**os.environ, **(env or {})}
    if public:
        full_env.setdefault("VIT_EXPLORER_PUBLIC", "1")
    try:
        for i, port in enumerate(ports):
            with open(served.replica_log(i), "w") as out:
                cmd = replica_command(port, public=public, extra=streamlit_args)
                served.replicas.append(
                    subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
                )
        log(f"started {len(ports)} replica(s) on 127.0.0.1:{', '.join(map(str, ports))}; waiting for them")
        deadline = time.time() + START_TIMEOUT_S
        waiting = dict(enumerate(ports))
        while waiting:
            for i, port in list(waiting.items()):
                if _healthy(f"http://127.0.0.1:{port}"):
                    del waiting[i]
                elif served.replicas[i].poll() is not None:
                    tail = served.replica_log(i).read_text()[-600:]
                    raise ServeError(f"replica {i} (port {port}) exited; its log {served.replica_log(i)} ends:\n{tail}")
            if waiting and time.time() > deadline:
                raise ServeError(
                    f"replica(s) on port(s) {list(waiting.values())} did not answer in {START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.3)
        conf = run / "nginx.conf"
        conf.write_text(render_config(run, listen, upstreams, sticky))
        args = [nginx, "-p", str(run), "-c", str(conf), "-e", str(run / "error.log")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServeError(f"nginx refused the config {conf}:\n{check.stderr.strip()}")
        with open(run / "nginx.out", "w") as out:
            served.nginx = subprocess.Popen(args, cwd=run, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not _healthy(served.url):
            if served.nginx.poll() is not None:
                raise ServeError(f"nginx exited: {(run / 'nginx.out').read_text().strip()[-600:]}")
            if time.time() > deadline:
                raise ServeError(f"nginx did not answer on {served.url} in 20 s; see {run / 'error.log'}")
            time.sleep(0.2)
        log(f"ViT Explorer: {served.url} -> {', '.join(upstreams)} (sticky: {sticky}); logs in {run}")
        yield served
    finally:
        if served.nginx is not None:
            _stop(served.nginx)
        for proc in served.replicas:
            _stop(proc)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", type=int, default=2, help="Streamlit replicas on this machine (default 2)")
    p.add_argument("--first-port", type=int, default=8501, help="port of the first replica; the next count up")
    p.add_argument("--port", type=int, default=8500, help="the proxy's port (default 8500)")
    p.add_argument(
        "--address", default="127.0.0.1", help="the proxy's address (default loopback; 0.0.0.0 serves the room)"
    )
    p.add_argument(
        "--remote", action="append", default=[], metavar="HOST:PORT", help="a replica on another machine (repeat)"
    )
    p.add_argument("--sticky", choices=sorted(STICKY), default="cookie", help="cookie (default) or ip (ip_hash)")
    p.add_argument("--run-dir", help="folder for the nginx config, pid and logs (default: a new temp folder)")
    p.add_argument("--not-public", action="store_true", help="without the classroom settings (VIT_EXPLORER_PUBLIC)")
    p.add_argument("--print-config", action="store_true", help="print the nginx config and exit")
    p.add_argument(
        "--print-replica-command", action="store_true", help="print one replica's command (for another machine)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = _parse(argv)
    if a.replicas < 0 or (a.replicas == 0 and not a.remote):
        print("--replicas must be at least 1 (or 0 with --remote)", file=sys.stderr)
        return 2
    ports = [a.first_port + i for i in range(a.replicas)]
    listen = f"{a.address}:{a.port}"
    if a.print_replica_command:
        cmd = replica_command(a.first_port, address="0.0.0.0", public=not a.not_public)
        env = "" if a.not_public else "VIT_EXPLORER_PUBLIC=1 "
        print(env + " ".join(["python", *cmd[1:]]))
        return 0
    if a.print_config:
        run = a.run_dir or "/path/to/run-dir"
        print(render_config(run, listen, [f"127.0.0.1:{p}" for p in ports] + a.remote, a.sticky))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with serve(ports, listen, a.remote, a.sticky, a.run_dir, public=not a.not_public) as served:
            while not stop.is_set():
                if served.nginx.poll() is not None:
                    print(f"nginx stopped; see {served.run_dir / 'error.log'}", file=sys.stderr)
                    return 1
                for i, proc in enumerate(served.replicas):
                    if proc.poll() is not None:
                        print(f"replica {i} stopped; see {served.replica_log(i)}", file=sys.stderr)
                        return 1
                stop.wait(1.0)
    except (ServeError, ValueError) as e:
        print(f"serve_replicas: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
