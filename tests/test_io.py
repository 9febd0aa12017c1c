"""jacuap.io: atomic writes leave the old file or the new one, never a part or a temp file."""

import json
import os
import stat

import numpy as np
import pytest

from jacuap import io


def _listing(path):
    return sorted(os.listdir(path))


def test_text_json_npy_and_figure_round_trip_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text_atomic(tmp_path / "a.txt", "hello")
        io.write_json_atomic(tmp_path / "b.json", {"x": 1.5})
        io.save_npy_atomic(tmp_path / "c.npy", np.arange(3))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure()
        io.save_figure_atomic(fig, tmp_path / "d.png")
        plt.close(fig)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1.5}
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.arange(3))
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert _listing(tmp_path) == ["a.txt", "b.json", "c.npy", "d.png"]
    for name in _listing(tmp_path):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_json_refuses_nan_and_keeps_the_old_file(tmp_path):
    io.write_json_atomic(tmp_path / "r.json", {"uer": 0.5})
    with pytest.raises(ValueError):
        io.write_json_atomic(tmp_path / "r.json", {"uer": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"uer": 0.5}
    assert _listing(tmp_path) == ["r.json"]


def test_failure_mid_write_removes_the_temp_file(tmp_path):
    io.write_text_atomic(tmp_path / "t.txt", "old")

    def boom(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "t.txt", boom)
    assert (tmp_path / "t.txt").read_text() == "old"
    assert _listing(tmp_path) == ["t.txt"]
