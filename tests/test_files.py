import os
import stat

import pytest

from dense_lightning.files import atomic_write, atomic_write_all


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    saved = os.umask(0o022)
    os.umask(saved)
    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "sub" / "weights.pth"
    atomic_write(target, lambda p: p.write_bytes(b"weights"))
    assert target.read_bytes() == b"weights"
    assert stat.S_IMODE(target.stat().st_mode) == expected
    # The same as an ordinary open() under that umask.
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == expected


def test_all_or_none_when_a_writer_raises(tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.json"
    first.write_text("old")

    def boom(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_all({first: lambda p: p.write_text("new"), second: boom})
    assert first.read_text() == "old"  # untouched, although its writer had finished
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # no temporary files


def test_every_file_is_replaced_when_all_writers_succeed(tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.json"
    first.write_text("old")
    atomic_write_all({first: lambda p: p.write_text("new"), second: lambda p: p.write_text("{}")})
    assert first.read_text() == "new" and second.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.json"]
