"""The Store contract, run on every store: a directory and Azure Blob on a real Azurite."""

from __future__ import annotations

import pytest

from fleetscore.errors import AlreadyExists, NotFound, StoreError


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


def test_close_is_idempotent(store):
    store.close()
    store.close()
