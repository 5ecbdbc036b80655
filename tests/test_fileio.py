"""atomic_write: the target is replaced whole or not at all."""

import os

import pytest

from vit_core.fileio import atomic_write, remove_quietly


def test_atomic_write_replaces_target_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "sub" / "f.txt"
    with atomic_write(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest
        tmp.write_text("new")
        assert not dest.exists()  # nothing visible before the block ends
    assert dest.read_text() == "new"
    assert oct(dest.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_remove_quietly_ignores_missing(tmp_path):
    remove_quietly(tmp_path / "absent")
    p = tmp_path / "x"
    p.write_text("1")
    remove_quietly(p)
    assert not p.exists()


def test_single_flight_runs_one_call_for_concurrent_callers():
    import threading
    import time

    from vit_core.fileio import SingleFlight

    sf = SingleFlight()
    calls, results = [], []
    started = threading.Event()

    def download():
        calls.append(1)
        started.set()
        time.sleep(0.3)
        return "file"

    def click():
        results.append(sf.do("cifar10", download))

    threads = [threading.Thread(target=click) for _ in range(5)]
    threads[0].start()
    started.wait(5)
    assert sf.in_flight("cifar10")
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(5)
    assert calls == [1] and results == ["file"] * 5
    assert not sf.in_flight("cifar10")
    assert sf.do("cifar10", lambda: "again") == "again"  # a later call runs anew


def test_single_flight_shares_the_error():
    import threading

    from vit_core.fileio import SingleFlight

    sf = SingleFlight()
    gate = threading.Event()
    errors = []

    def failing():
        gate.wait(5)
        raise OSError("no network")

    def click():
        try:
            sf.do("k", failing)
        except OSError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=click) for _ in range(3)]
    for t in threads:
        t.start()
    while not sf.in_flight("k"):
        pass
    gate.set()
    for t in threads:
        t.join(5)
    assert errors == ["no network"] * 3
