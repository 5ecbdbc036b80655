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
