"""Artefact storage: one suite against a local folder and a real S3 server (moto) on loopback."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from serve.storage import (
    ArtefactNotFoundError,
    ArtefactStorage,
    InvalidArtefactKeyError,
    LocalStorage,
    RangeNotSatisfiableError,
    S3Storage,
    validate_key,
)
from tests.support.s3server import moto_s3_server

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset identifiable


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


def _s3(endpoint: str, bucket: str, prefix: str = "", **kwargs: Any) -> S3Storage:
    return S3Storage(
        bucket,
        endpoint_url=endpoint,
        access_key="test-access",
        secret_key="test-secret",
        region="us-east-1",
        prefix=prefix,
        **kwargs,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ArtefactStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "artefacts")
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = _s3(endpoint, f"t-{uuid.uuid4().hex[:20]}", prefix="dfd")
    s3.ensure_bucket()
    return s3


@pytest.fixture(scope="module")
def real_image(shared_data: Path) -> Path:
    return shared_data / "faces" / "fr_obama.jpg"


def test_key_validation() -> None:
    for good in ("a", "jobs/abc/gallery/shot-001.jpg", "x_y/Z-9/v1.2.json", "a/b.c/d"):
        assert validate_key(good) == good
    bad = (
        "",
        "/abs/path",
        "../up",
        "a/../b",
        "a/./b",
        "a//b",
        "a/",
        ".hidden",
        "a/.meta/x",
        "a\\b",
        "a b",
        "a\x00b",
        "é",
        "x" * 513,
    )
    for key in bad:
        with pytest.raises(InvalidArtefactKeyError):
            validate_key(key)


def test_put_get_stat_exists(storage: ArtefactStorage) -> None:
    key = "jobs/j1/result.json"
    assert not storage.exists(key)
    storage.put_bytes(key, b'{"a": 1}', "application/json")
    assert storage.exists(key)
    assert storage.get_bytes(key) == b'{"a": 1}'
    info = storage.stat(key)
    assert (info.key, info.size, info.content_type) == (key, 8, "application/json")
    storage.put_bytes(key, b"replaced", "text/plain")
    assert storage.get_bytes(key) == b"replaced"
    assert storage.stat(key).content_type == "text/plain"
    storage.put_bytes("jobs/j1/empty.bin", b"")
    assert storage.get_bytes("jobs/j1/empty.bin") == b""
    assert storage.stat("jobs/j1/empty.bin").content_type == "application/octet-stream"
    assert list(storage.iter_bytes("jobs/j1/empty.bin")) == []


def test_put_file_with_real_media(storage: ArtefactStorage, real_image: Path) -> None:
    storage.put_file("uploads/obama.jpg", real_image, "image/jpeg")
    data = real_image.read_bytes()
    got = storage.get_bytes("uploads/obama.jpg")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.stat("uploads/obama.jpg") == ("uploads/obama.jpg", len(data), "image/jpeg")
    with storage.open("uploads/obama.jpg") as f:
        assert f.read(3) == b"\xff\xd8\xff"  # a JPEG
        assert f.read() == data[3:]


def test_range_reads(storage: ArtefactStorage) -> None:
    key = "jobs/j2/crop.bin"
    storage.put_bytes(key, DATA)
    n = len(DATA)
    assert b"".join(storage.iter_bytes(key)) == DATA
    assert b"".join(storage.iter_bytes(key, 0, 0)) == DATA[:1]
    assert b"".join(storage.iter_bytes(key, 100, 199)) == DATA[100:200]
    assert b"".join(storage.iter_bytes(key, 5000)) == DATA[5000:]
    assert b"".join(storage.iter_bytes(key, n - 4)) == b"tail"
    assert b"".join(storage.iter_bytes(key, n - 1, n - 1)) == b"l"
    # An end past the last byte is clamped, as HTTP requires.
    assert b"".join(storage.iter_bytes(key, n - 4, n + 1000)) == b"tail"
    # Chunking never changes the bytes.
    chunks = list(storage.iter_bytes(key, 10, 9999, chunk_size=1000))
    assert b"".join(chunks) == DATA[10:10000]
    assert len(chunks) >= 10 and max(len(c) for c in chunks) <= 1000
    with pytest.raises(RangeNotSatisfiableError):
        storage.iter_bytes(key, n)
    with pytest.raises(RangeNotSatisfiableError):
        storage.iter_bytes(key, n + 10, n + 20)
    with pytest.raises(ValueError):
        storage.iter_bytes(key, 10, 5)
    with pytest.raises(ValueError):
        storage.iter_bytes(key, -1)


def test_missing_keys(storage: ArtefactStorage) -> None:
    for call in (
        lambda: storage.get_bytes("nope/x.jpg"),
        lambda: storage.stat("nope/x.jpg"),
        lambda: storage.iter_bytes("nope/x.jpg", 0, 10),
        lambda: storage.open("nope/x.jpg"),
    ):
        with pytest.raises(ArtefactNotFoundError):
            call()
    assert storage.exists("nope/x.jpg") is False


def test_invalid_keys_are_refused_by_every_operation(storage: ArtefactStorage) -> None:
    for call in (
        lambda: storage.put_bytes("../escape", b"x"),
        lambda: storage.put_bytes("/etc/passwd", b"x"),
        lambda: storage.get_bytes("a/../../b"),
        lambda: storage.exists(".meta/x"),
        lambda: storage.delete_prefix(""),
        lambda: storage.delete_prefix("../"),
        lambda: storage.list_keys("/"),
    ):
        with pytest.raises(InvalidArtefactKeyError):
            call()


def test_delete_prefix_and_list(storage: ArtefactStorage) -> None:
    for key in (
        "jobs/a1/gallery/s1.jpg",
        "jobs/a1/gallery/s2.jpg",
        "jobs/a1/faces/f1.jpg",
        "jobs/a10/gallery/s1.jpg",
        "jobs/b2/result.json",
    ):
        storage.put_bytes(key, key.encode(), "image/jpeg")
    assert storage.list_keys("jobs/a1/") == [
        "jobs/a1/faces/f1.jpg",
        "jobs/a1/gallery/s1.jpg",
        "jobs/a1/gallery/s2.jpg",
    ]
    # A plain string prefix: "jobs/a1" also covers "jobs/a10".
    assert len(storage.list_keys("jobs/a1")) == 4
    assert storage.delete_prefix("jobs/a1/") == 3
    assert not storage.exists("jobs/a1/gallery/s1.jpg")
    assert storage.get_bytes("jobs/a10/gallery/s1.jpg") == b"jobs/a10/gallery/s1.jpg"
    assert storage.list_keys("jobs/") == ["jobs/a10/gallery/s1.jpg", "jobs/b2/result.json"]
    assert storage.delete_prefix("jobs/zz/") == 0
    assert storage.delete_prefix("jobs/") == 2
    assert storage.list_keys("jobs/") == []


def test_move_stores_under_the_new_key_and_deletes_the_old(storage: ArtefactStorage) -> None:
    storage.put_bytes("uploads/u/abc", DATA)
    storage.move("uploads/u/abc", "jobs/j/source.jpeg", "image/jpeg")
    assert storage.get_bytes("jobs/j/source.jpeg") == DATA
    assert storage.stat("jobs/j/source.jpeg").content_type == "image/jpeg"
    assert not storage.exists("uploads/u/abc") and storage.list_keys("uploads/") == []
    with pytest.raises(ArtefactNotFoundError):
        storage.move("uploads/u/abc", "jobs/j/again.jpeg")
    assert storage.upload_url("uploads/u/x") is None  # only S3 with a public endpoint


def test_local_paths_and_atomic_layout(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    store.put_bytes("jobs/j/g.png", b"\x89PNG", "image/png")
    path = store.local_path("jobs/j/g.png")
    assert path == (tmp_path / "root" / "jobs" / "j" / "g.png").resolve()
    assert path.read_bytes() == b"\x89PNG"
    assert store.presigned_url("jobs/j/g.png") is None
    with pytest.raises(ArtefactNotFoundError):
        store.local_path("jobs/j/missing.png")
    # No temporary files are left next to the artefact, and metadata stays hidden.
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.png"]
    assert store.list_keys("jobs/") == ["jobs/j/g.png"]
    store.delete_prefix("jobs/")
    assert not (tmp_path / "root" / "jobs").exists()
    # A key cannot be both a file and a folder on disk.
    store.put_bytes("a/b", b"file")
    with pytest.raises(InvalidArtefactKeyError):
        store.put_bytes("a/b/c", b"nested")
    assert store.get_bytes("a/b") == b"file"


def test_s3_presigned_url_is_fetchable_and_prefix_is_applied(s3_endpoint: str) -> None:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    store = _s3(s3_endpoint, bucket, prefix="svc/v1/")
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.put_bytes("jobs/j/g.jpg", DATA, "image/jpeg")
    assert store.local_path("jobs/j/g.jpg") is None
    url = store.presigned_url("jobs/j/g.jpg", expires_s=60)
    assert url.startswith(s3_endpoint) and "X-Amz-Signature" in url
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.content == DATA and r.headers["content-type"] == "image/jpeg"
    # Downloads stay with the service unless a public endpoint is configured.
    assert store.download_url("jobs/j/g.jpg") is None
    public = _s3(s3_endpoint, bucket, prefix="svc/v1/", public_endpoint_url=s3_endpoint)
    direct = public.download_url("jobs/j/g.jpg")
    assert direct is not None and direct.startswith(s3_endpoint) and "Expires=900" in direct
    assert httpx.get(direct, timeout=10).content == DATA
    # Direct uploads: a presigned PUT at the public endpoint lands under the prefix.
    put = public.upload_url("uploads/u/new")
    assert put is not None and put.startswith(s3_endpoint) and "Expires=3600" in put
    assert httpx.put(put, content=DATA, timeout=10).status_code == 200
    assert public.get_bytes("uploads/u/new") == DATA
    # Objects live under the prefix; an unprefixed store over the same bucket sees the full key.
    raw = _s3(s3_endpoint, bucket)
    assert raw.list_keys("svc/") == ["svc/v1/jobs/j/g.jpg", "svc/v1/uploads/u/new"]
    assert store.list_keys("jobs/") == ["jobs/j/g.jpg"]


def test_s3_missing_bucket_is_not_a_missing_artefact(s3_endpoint: str) -> None:
    store = _s3(s3_endpoint, f"t-{uuid.uuid4().hex[:20]}")
    store.ensure_bucket()
    with pytest.raises(ArtefactNotFoundError):
        store.get_bytes("missing")
    other_bucket = _s3(s3_endpoint, f"absent-{uuid.uuid4().hex[:16]}")
    # A missing bucket is not a missing artefact: it is a deployment problem and must surface.
    with pytest.raises(ClientError) as exc_info:
        other_bucket.put_bytes("k", b"x")
    assert exc_info.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(ClientError):
        other_bucket.get_bytes("k")
