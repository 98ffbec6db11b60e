"""The Store contract, run on every store: a directory and Azure Blob on a real Azurite."""

from __future__ import annotations

import pytest

from fleetscore.errors import AlreadyExists, Conflict, NotFound, StoreError, UsageError


def test_put_get_roundtrip(store):
    store.put("a/b/c.bin", b"\x00\x01payload")
    assert store.get("a/b/c.bin") == b"\x00\x01payload"
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")


def test_overwrite_replaces_whole_file(store):
    store.put("x.txt", b"a much longer first version")
    store.put("x.txt", b"short")
    assert store.get("x.txt") == b"short"


def test_conditional_put_refuses_existing(store):
    store.put("lock.json", b"first", overwrite=False)
    with pytest.raises(AlreadyExists, match="lock.json"):
        store.put("lock.json", b"second", overwrite=False)
    assert store.get("lock.json") == b"first"


def test_get_missing_raises_not_found_naming_path(store):
    with pytest.raises(NotFound, match="nope/missing.csv"):
        store.get("nope/missing.csv")


def test_list_is_recursive_sorted_and_scoped_to_folder(store):
    for path in ["w/2024/01/b.parquet", "w/2024/01/a.parquet", "w/2024/02/c.parquet",
                 "w2/other.txt", "top.txt"]:
        store.put(path, b"x")
    assert list(store.list("w")) == ["w/2024/01/a.parquet", "w/2024/01/b.parquet",
                                      "w/2024/02/c.parquet"]
    assert list(store.list("w/2024/01/")) == ["w/2024/01/a.parquet", "w/2024/01/b.parquet"]
    assert list(store.list("absent")) == []
    assert "top.txt" in list(store.list(""))


def test_delete_is_idempotent(store):
    store.put("d.txt", b"x")
    store.delete("d.txt")
    store.delete("d.txt")
    assert not store.exists("d.txt")


def test_open_is_seekable_for_range_reads(store):
    data = bytes(range(256)) * 64
    store.put("r.bin", data)
    with store.open("r.bin") as handle:
        handle.seek(-16, 2)
        assert handle.read() == data[-16:]
        handle.seek(1000)
        assert handle.read(10) == data[1000:1010]
        assert handle.tell() == 1010


def test_open_missing_raises_not_found(store):
    with pytest.raises(NotFound):
        store.open("missing.bin")


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../b", "a//b", "", "a/./b", "a\\b"])
def test_paths_that_could_escape_are_refused(store, bad):
    with pytest.raises(StoreError):
        store.put(bad, b"x")


def test_close_is_idempotent(blob_store):
    closes = []
    inner = blob_store._client.close
    blob_store._client.close = lambda: closes.append(inner())
    blob_store.close()
    blob_store.close()
    assert len(closes) == 1  # the connection pool is closed once, and a second close is quiet


def test_version_conditional_put_and_delete(store):
    store.put("v.json", b"one")
    data, tag = store.get_versioned("v.json")
    assert data == b"one"
    store.put("v.json", b"two", if_match=tag)
    with pytest.raises(Conflict, match="v.json"):
        store.put("v.json", b"three", if_match=tag)  # stale version: refused
    with pytest.raises(Conflict):
        store.delete("v.json", if_match=tag)
    assert store.get("v.json") == b"two"
    _, fresh = store.get_versioned("v.json")
    store.delete("v.json", if_match=fresh)
    assert not store.exists("v.json")
    with pytest.raises(Conflict):  # gone: no version of it can match
        store.put("v.json", b"four", if_match=fresh)
    with pytest.raises(Conflict):
        store.delete("v.json", if_match=fresh)


def test_compare_and_swap_loses_no_update_under_contention(local_store, tmp_path):
    """Four processes increment one counter by read + conditional write: every successful
    write counts, so the final value is exactly the number of successes."""
    import subprocess
    import sys

    local_store.put("counter", b"0")
    script = f"""
import sys
from fleetscore.errors import Conflict
from fleetscore.storage import LocalStore
store = LocalStore({str(local_store.root)!r})
wins = 0
for _ in range(60):
    data, tag = store.get_versioned("counter")
    try:
        store.put("counter", str(int(data) + 1).encode(), if_match=tag)
        wins += 1
    except Conflict:
        pass
print(wins)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    wins = sum(int(p.communicate()[0]) for p in procs)
    assert int(local_store.get("counter")) == wins and wins >= 60


def test_a_store_that_does_not_exist_is_refused_not_created(tmp_path, blob_settings):
    from fleetscore.storage import open_store

    with pytest.raises(UsageError, match="no fleetscore store at"):
        open_store(str(tmp_path / "mistyped"))
    assert not (tmp_path / "mistyped").exists()
    with pytest.raises(UsageError, match="no fleetscore store at"):
        open_store("az://nosuchcontainer", blob_settings)
    open_store(str(tmp_path / "new"), create=True)
    open_store(str(tmp_path / "new"))  # now it exists


def test_files_follow_the_umask(local_store):
    import os
    import stat

    old = os.umask(0o022)
    os.umask(old)
    local_store.put("m.txt", b"x")
    mode = stat.S_IMODE(os.stat(local_store.root / "m.txt").st_mode)
    assert mode == 0o666 & ~old


def test_a_reader_never_sees_a_torn_file(local_store):
    """Writes are a temporary file renamed into place: a reader racing a writer sees the old
    bytes or the new ones, never a part."""
    import threading

    versions = [b"a" * (4 << 20), b"b" * (3 << 20)]
    local_store.put("big.bin", versions[0])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            local_store.put("big.bin", versions[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = [local_store.get("big.bin") for _ in range(150)]
    finally:
        stop.set()
        thread.join()
    assert all(data in versions for data in seen)


def _arrow_in_fork(connection_string: str, container: str):
    from fleetscore.storage.blob import BlobStore

    return BlobStore(container, connection_string=connection_string)._arrow is None


def test_a_forked_worker_never_reads_through_its_parents_arrow_connections(azurite, blob_store):
    """The Azure C++ SDK's connection pool is per process: a fork shares its sockets with the
    parent. A worker forked after the parent read through pyarrow uses the Python SDK."""
    import multiprocessing

    from fleetscore.storage.blob import BlobStore

    parent = BlobStore(blob_store.url[len("az://"):], connection_string=azurite.connection_string)
    assert parent._arrow is not None  # Azurite's account maps onto pyarrow's filesystem
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_arrow_in_fork, (azurite.connection_string,
                                           blob_store.url[len("az://"):]))


def test_a_local_delete_leaves_no_empty_folders(local_store):
    local_store.put("runs/2024-01-01T00/r1/predictions/u1.csv", b"x")
    local_store.put("runs/2024-01-01T00/r1/plan.json", b"{}")
    local_store.delete("runs/2024-01-01T00/r1/predictions/u1.csv")
    assert not (local_store.root / "runs/2024-01-01T00/r1/predictions").exists()
    local_store.delete("runs/2024-01-01T00/r1/plan.json")
    assert not (local_store.root / "runs").exists() and local_store.root.is_dir()
    # A folder pruned between a writer's two steps is made again.
    local_store.put("runs/2024-01-01T00/r1/plan.json", b"{}")
    assert local_store.get("runs/2024-01-01T00/r1/plan.json") == b"{}"


def test_a_local_copy_is_atomic_and_independent_of_its_source(local_store):
    local_store.put("runs/h/r/predictions/u.csv", b"a,b\n1,2\n")
    local_store.copy("runs/h/r/predictions/u.csv", "predictions/h/u-r.csv")
    local_store.put("runs/h/r/predictions/u.csv", b"rewritten")  # a straggler's rewrite
    local_store.delete("runs/h/r/predictions/u.csv")
    assert local_store.get("predictions/h/u-r.csv") == b"a,b\n1,2\n"
    with pytest.raises(NotFound):
        local_store.copy("runs/h/r/predictions/u.csv", "predictions/h/x.csv")
    assert list(local_store.list("predictions")) == ["predictions/h/u-r.csv"]


def test_get_many_keeps_order_and_says_what_is_missing(store):
    from fleetscore.storage.base import get_many

    paths = [f"m/{i:03d}.json" for i in range(40)]
    for i, path in enumerate(paths):
        if i % 7:
            store.put(path, str(i).encode())
    got = get_many(store, paths, missing_ok=True)  # concurrent on Blob, in order either way
    assert got == [None if i % 7 == 0 else str(i).encode() for i in range(40)]
    with pytest.raises(NotFound, match="m/000.json"):
        get_many(store, paths)


@pytest.mark.parametrize("write", ["put", "delete"])
def test_a_plain_write_never_falls_inside_a_compare_and_swap(local_store, monkeypatch, write):
    """Blob storage checks If-Match as it writes. A directory store checks, then renames: a
    plain put or delete from another thread arriving in between must wait for the rename and
    land after it, not be undone by it."""
    import threading

    from fleetscore.storage.local import LocalStore

    local_store.put("a.json", b"v1")
    _, version = local_store.get_versioned("a.json")
    current, threads = LocalStore._current, []

    def racing(self, path):
        seen = current(self, path)
        if not threads:
            work = (lambda: local_store.put("a.json", b"plain")) if write == "put" else \
                (lambda: local_store.delete("a.json"))
            threads.append(threading.Thread(target=work))
            threads[0].start()
            threads[0].join(0.3)  # one that does not wait lands now
        return seen

    monkeypatch.setattr(LocalStore, "_current", racing)
    local_store.put("a.json", b"swapped", if_match=version)
    threads[0].join(10)
    if write == "put":
        assert local_store.get("a.json") == b"plain"
    else:
        assert not local_store.exists("a.json")


@pytest.mark.reliability("R45")
@pytest.mark.parametrize("write", ["put", "copy"])
def test_a_local_write_survives_a_prune_of_the_folders_it_is_making(local_store, monkeypatch,
                                                                     write):
    """A delete prunes the folders it empties while another writer (a training worker saving
    a sensor's model beside it) is making the same folders one level at a time: the writer's
    next level then has no parent. Git's raceproof_create_file has the same race with its own
    pruning, and the same answer: make the folders again and retry."""
    import os

    local_store.put("bank/saving/d1/t1/m.json", b"{}")
    local_store.put("src.csv", b"a\n")
    real_mkdir, pruned = os.mkdir, []

    def mkdir(path, *args, **kwargs):
        if not pruned and str(path).endswith(os.path.join("saving", "d2")):
            pruned.append(path)  # the other worker's save ends here: bank/ is pruned away
            local_store.delete("bank/saving/d1/t1/m.json")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    if write == "put":
        local_store.put("bank/saving/d2/t2/n.json", b"{}")
    else:
        local_store.copy("src.csv", "bank/saving/d2/t2/n.json")
    assert pruned and not local_store.exists("bank/saving/d1/t1/m.json")
    assert local_store.get("bank/saving/d2/t2/n.json") in (b"{}", b"a\n")


def _save_and_forget(root: str, worker: int, rounds: int) -> list[str]:
    from fleetscore.storage.local import LocalStore

    store, failures = LocalStore(root), []
    for i in range(rounds):
        path = f"bank/saving/d{worker}/t{i % 3}/{i}.json"
        try:
            store.put(path, b"{}")
            store.delete(path)
        except StoreError as exc:
            failures.append(str(exc))
    return failures


@pytest.mark.reliability("R45")
def test_local_writers_and_deletes_in_sibling_folders_never_fail(local_store):
    """Two processes each write a file and delete it again (a model save's marker), in sibling
    folders, so each delete prunes folders the other is making: none of it may fail."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        failed = pool.starmap(_save_and_forget, [(str(local_store.root), w, 1500) for w in (1, 2)])
    assert failed == [[], []], (sum(map(len, failed)), failed[0][:1] or failed[1][:1])
