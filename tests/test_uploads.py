"""Upload storage: quotas before writing, per-session folders, expiry, dedupe, LRU cache cap."""

import os
import threading
import time

import pytest

from vit_core.limits import Limits
from vit_core.uploads import (
    MARKER,
    UploadError,
    UploadStore,
    check_regular_file,
    evict_lru,
    folder_bytes,
    mark_owned,
    safe_name,
)

KB = 1024


def store(tmp_path, **lim):
    return UploadStore(tmp_path / "uploads", Limits(**lim))


def test_safe_name_keeps_the_users_name_but_no_path():
    assert safe_name("holiday photo.jpg") == "holiday photo.jpg"
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\cat.png") == "cat.png"
    assert safe_name("..") == "upload" and safe_name("$$$") == "upload"


def test_each_session_writes_only_its_own_folder(tmp_path):
    s = store(tmp_path)
    a = s.save("sessA", "../../m.safetensors", b"a" * 10)
    b = s.save("sessB", "m.safetensors", b"b" * 20)
    assert a.parent == s.session_dir("sessA") and b.parent == s.session_dir("sessB")
    assert a.read_bytes() == b"a" * 10 and b.read_bytes() == b"b" * 20
    assert oct(a.stat().st_mode & 0o777) == oct(0o600)
    with pytest.raises(ValueError):
        s.session_dir("../sessB")
    s.remove_session("sessA")
    assert not s.session_dir("sessA").exists() and b.exists()


def test_session_quota_is_checked_before_anything_is_written(tmp_path):
    s = store(tmp_path, upload_quota_session_bytes=100 * KB)
    s.save("s1", "one.bin", b"x" * (60 * KB))
    with pytest.raises(UploadError, match="past 100 KB"):
        s.save("s1", "two.bin", b"x" * (60 * KB))
    assert not (s.session_dir("s1") / "two.bin").exists()
    assert s.session_bytes("s1") == 60 * KB
    s.save("s1", "one.bin", b"y" * (90 * KB))  # replacing a file counts its new size only
    s.save("s2", "two.bin", b"x" * (60 * KB))  # another session has its own quota
    assert [p.name for p in (s.root / "sessions" / "s1").iterdir() if p.name != MARKER] == ["one.bin"]


def test_server_quota_covers_all_sessions(tmp_path):
    s = store(tmp_path, upload_quota_server_bytes=100 * KB)
    s.save("s1", "a", b"x" * (70 * KB))
    with pytest.raises(UploadError, match="server's space for uploads is full"):
        s.save("s2", "b", b"x" * (40 * KB))
    assert not s.session_dir("s2").exists() or folder_bytes(s.session_dir("s2")) == 0


def test_shared_files_are_stored_once_by_content(tmp_path):
    s = store(tmp_path)
    data = os.urandom(50 * KB)
    paths = []

    def upload():
        paths.append(s.save_shared(data, ".tar.gz"))

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert paths[0].name.endswith(".tar.gz")
    assert folder_bytes(s.root / "shared") == len(data)


def test_sweep_removes_only_old_folders_of_its_own(tmp_path):
    s = store(tmp_path, upload_ttl_s=3600)
    old = s.save("old", "a", b"1")
    new = s.save("new", "a", b"1")
    stale = time.time() - 7200
    os.utime(old, (stale, stale))
    os.utime(old.parent, (stale, stale))
    os.utime(old.parent / MARKER, (stale, stale))
    foreign = s.root / "sessions" / "not-ours"
    foreign.mkdir()
    os.utime(foreign, (stale, stale))
    removed = s.sweep()
    assert removed == [old.parent]
    assert new.exists() and foreign.exists()


def test_fifo_and_folders_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    done = []

    def check():
        with pytest.raises(UploadError, match="not a regular file"):
            check_regular_file(fifo)
        done.append(True)

    t = threading.Thread(target=check, daemon=True)
    t.start()
    t.join(5)
    assert done, "check_regular_file blocked on a FIFO"
    with pytest.raises(UploadError, match="not a regular"):
        check_regular_file(tmp_path)
    with pytest.raises(UploadError, match="no readable file at that path") as e:
        check_regular_file(tmp_path / "absent")
    assert str(tmp_path) not in str(e.value)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(UploadError, match="limit is 1 KB"):
        check_regular_file(big, max_bytes=1024)
    assert check_regular_file(big, max_bytes=4096) == big


def test_evict_lru_keeps_the_cache_under_its_cap_newest_first(tmp_path):
    root = tmp_path / "cache"
    mark_owned(root)
    for i, name in enumerate(["a", "b", "c", "d"]):
        d = root / name
        d.mkdir()
        (d / "x.npz").write_bytes(b"x" * (100 * KB))
        t = time.time() - 1000 + i * 10
        os.utime(d / "x.npz", (t, t))
        os.utime(d, (t, t))
    removed = evict_lru(root, cap_bytes=250 * KB, keep=("a",))
    assert [p.name for p in removed] == ["b", "c"]  # oldest first, "a" is in use
    assert sorted(p.name for p in root.iterdir() if p.name != MARKER) == ["a", "d"]
    assert folder_bytes(root) <= 250 * KB
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_bytes(b"x" * 1000)
    assert evict_lru(plain, 0) == [] and (plain / "f").exists()  # never a folder it does not own
