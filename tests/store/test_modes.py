"""A store holds biometric data: its files are created 0600 in a 0700 folder whatever the umask
(SQLite's -wal/-shm and the writer lock included, and the audit log), and opening a store that
other users can read warns, naming each such file, without changing it."""

from __future__ import annotations

import contextlib
import logging
import os
import stat

import numpy as np
import pytest

from partreid.store import open_store

from .conftest import make_gallery

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
INFO = {"dim": 32, "model": {"name": "bot"}}


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_embedded_store_is_the_owners_only(tmp_path, caplog):
    folder = tmp_path / "deep" / "site"
    with umask(0), caplog.at_level(logging.WARNING, "partreid"):  # the umask would allow 0666
        with open_store(str(folder), create=True, info=INFO) as st:
            st.add(make_gallery(50))
            st.search(np.ones((1, 32), np.float32), 3)
            names = sorted(os.listdir(folder))
            assert {"store.json", "meta.sqlite", "vectors.f32", "writer.lock"} <= set(names)
            assert any(n.endswith("-wal") for n in names)  # written while open
            for name in names:
                assert mode(folder / name) == 0o600, name
        assert mode(folder) == 0o700
    assert not caplog.records  # nothing to warn about


def test_a_store_others_can_read_is_named_in_a_warning_and_left_as_it_is(tmp_path, caplog):
    folder = tmp_path / "site"
    with open_store(str(folder), create=True, info=INFO) as st:
        st.add(make_gallery(20))
    os.chmod(folder, 0o755)
    os.chmod(folder / "vectors.f32", 0o644)
    os.chmod(folder / "store.json", 0o640)
    with caplog.at_level(logging.WARNING, "partreid"), open_store(str(folder)):
        pass
    (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    msg = rec.getMessage()
    for name, m in [("vectors.f32", "0644"), ("store.json", "0640")]:
        assert f"{folder / name} ({m})" in msg
    assert f"{folder} (0755)" in msg and "meta.sqlite " not in msg
    assert f"chmod 700 {folder}" in msg and "chmod 600" in msg
    assert mode(folder / "vectors.f32") == 0o644 and mode(folder) == 0o755  # not changed


def test_the_audit_log_is_the_owners_only(tmp_path, caplog):
    from partreid.serve.access import AuditLog

    path = tmp_path / "logs" / "audit.log"
    with umask(0):
        log = AuditLog(str(path))
        log.write("search", "127.0.0.1", "/api/x")
        log.close()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, "partreid"):
        AuditLog(str(path)).close()
    assert f"{path} (0644)" in caplog.text


def test_a_new_milvus_lite_store_is_the_owners_only(tmp_path, caplog):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    target = tmp_path / "site.db"
    with umask(0), open_store(f"milvus://{target}", create=True, info=INFO) as st:
        st.add(make_gallery(10))
    assert mode(target) == 0o700  # Milvus Lite's files live under it
    os.chmod(target, 0o755)
    with caplog.at_level(logging.WARNING, "partreid"), open_store(f"milvus://{target}"):
        pass
    assert f"{target} (0755)" in caplog.text
