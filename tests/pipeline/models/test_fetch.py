"""``fetch_members``: MesoNet's real weights from a folder, file:// or HTTP mirror, all or nothing.

Mirrors are ``../shared/weights`` itself, a copy of it in ``tmp_path`` (to damage), or a real HTTP
server on loopback serving it; nothing leaves the machine.
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import CheckpointError, ConfigError, DownloadError, DownloadTimeoutError
from pipeline.models.catalog import KNOWN, known_files
from pipeline.models.checkpoint import file_sha256, load_checkpoint
from pipeline.models.fetch import MIRROR_ENV, fetch_members
from pipeline.models.manifest import ModelDirectory
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec
from tests.pipeline.models.test_mesonet import GOLDEN_ATOL, golden_batch, p_real, weights_or_skip
from tests.support.httpserver import (
    LoopbackServer,
    file_response,
    redirect_response,
    stall_response,
    status_response,
    truncated_response,
)

MESONET = [k.member for k in known_files("mesonet")]
#: The file every failure case damages: the last one, so three files are staged before it.
LAST = known_files("mesonet")[-1]
FIRST_PATH = known_files("mesonet")[0].mirror_path

Snapshot = dict[str, bytes | None] | None


def snapshot(root: Path) -> Snapshot:
    """Every file's bytes and every folder under ``root`` (None where ``root`` is absent)."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def serve_mirror(server: LoopbackServer, weights: Path, prefix: str = "") -> str:
    """Route every known file under ``prefix`` as the folder mirror lays it out; the base URL."""
    for known in known_files("mesonet"):
        server.route(f"{prefix}/{known.mirror_path}", file_response(weights / known.mirror_path))
    return server.base_url + prefix


def copy_mirror(weights: Path, dest: Path) -> Path:
    """A writable copy of the mirror's MesoNet files."""
    (dest / "mesonet").mkdir(parents=True)
    for known in known_files("mesonet"):
        shutil.copyfile(weights / known.mirror_path, dest / known.mirror_path)
    return dest


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> Path:
    return weights_or_skip()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def fetched(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    """A model directory that did not exist, after fetching ``mesonet`` from the folder mirror."""
    directory = ModelDirectory(tmp_path_factory.mktemp("fetched") / "models")
    specs = fetch_members(directory, "mesonet", mirror=str(weights))
    assert [s.name for s in specs] == MESONET
    return directory


@pytest.fixture(params=["absent", "manifest", "fetched"])
def model_dir(request: pytest.FixtureRequest, tmp_path: Path) -> ModelDirectory:
    """The directory a failing fetch goes into: not there yet, a fresh ``paper`` manifest, or
    one that already holds the MesoNet members."""
    if request.param == "absent":
        return ModelDirectory(tmp_path / "new" / "models")
    directory = ModelDirectory(tmp_path / "models")
    if request.param == "manifest":
        directory.init("paper")
    else:
        shutil.copytree(request.getfixturevalue("fetched").root, directory.root)
    return directory


# --- success --------------------------------------------------------------------------------


def test_folder_mirror_records_provenance_and_scores_like_keras(
    fetched: ModelDirectory, weights: Path
) -> None:
    root = fetched.root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["manifest.json", *(f"{m}.safetensors" for m in MESONET)]
    )  # no temporary file left behind
    manifest = fetched.load()
    assert manifest.ensembles["mesonet"] == MESONET
    assert "paper" in manifest.ensembles  # a new directory gets the paper preset first
    _, batch, expected = golden_batch(weights)
    for spec in manifest.ensemble("mesonet"):
        known = KNOWN[spec.name]
        assert spec.checkpoint == f"{spec.name}.safetensors"
        assert spec.sha256 == file_sha256(root / spec.checkpoint)
        assert spec.licence == "Apache-2.0"
        assert spec.trained_on == known.trained_on and spec.version == known.version
        assert spec.source == f"{known.source} via {weights / known.mirror_path}"
        assert known.sha256 in spec.source
        net = build_network(spec)
        load_checkpoint(net, root / spec.checkpoint, spec.sha256)
        with torch.no_grad():
            got = p_real(net(batch))
        stem = Path(known.mirror_path).stem
        assert abs(got - expected[stem]).max() <= GOLDEN_ATOL, spec.name


def test_http_mirror_from_the_environment_gives_the_same_members(
    weights: Path,
    tmp_path: Path,
    server: LoopbackServer,
    fetched: ModelDirectory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = serve_mirror(server, weights, "/weights")
    monkeypatch.setenv(MIRROR_ENV, base + "/")
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny")
    tiny = [m.name for m in directory.load().members]
    specs = fetch_members(directory, "mesonet", timeout_s=10)
    manifest = directory.load()
    assert [m.name for m in manifest.members] == [*tiny, *MESONET]  # existing members kept
    reference = fetched.load()
    for spec in specs:
        known = KNOWN[spec.name]
        assert server.hits(f"/weights/{known.mirror_path}") == 1
        assert spec.source.endswith(f" via {base}/{known.mirror_path}")
        # The same bytes, converted the same way: the same checkpoint as the folder fetch.
        assert spec.sha256 == reference.member(spec.name).sha256
        assert manifest.member(spec.name) == spec


def test_one_member_through_a_redirect(
    weights: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    known = KNOWN["meso4_df"]
    server.route(f"/real/{known.mirror_path}", file_response(weights / known.mirror_path))
    server.route(f"/moved/{known.mirror_path}", redirect_response(f"/real/{known.mirror_path}"))
    directory = ModelDirectory(tmp_path / "models")
    (spec,) = fetch_members(directory, "meso4_df", mirror=server.url("/moved"))
    assert spec.sha256 == file_sha256(directory.root / "meso4_df.safetensors")
    assert directory.load().ensembles["mesonet"][0] == "meso4_df"


def test_explicit_file_url_mirror_wins_over_the_environment(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-such-mirror"))
    directory = ModelDirectory(tmp_path / "models")
    (spec,) = fetch_members(directory, "mesoinception4_f2f", mirror=weights.as_uri())
    assert spec.source.endswith(f"via {weights / KNOWN[spec.name].mirror_path}")


# --- failures: one clear error, and the directory exactly as it was ------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["404", "truncated", "refused", "wrong-hash", "missing-file"])
def test_a_failed_fetch_changes_nothing(
    failure: str,
    model_dir: ModelDirectory,
    weights: Path,
    tmp_path: Path,
    server: LoopbackServer,
) -> None:
    last_file = weights / LAST.mirror_path
    expected_error: type[Exception] = DownloadError
    if failure == "404":
        mirror = serve_mirror(server, weights)
        server.route(f"/{LAST.mirror_path}", status_response(404, b"not found"))
        pattern = f"GET {mirror}/{LAST.mirror_path} answered 404"
    elif failure == "truncated":
        mirror = serve_mirror(server, weights)
        server.route(f"/{LAST.mirror_path}", truncated_response(last_file, 1000))
        pattern = f"{mirror}/{LAST.mirror_path} was cut short"
    elif failure == "refused":
        mirror = f"http://127.0.0.1:{_closed_port()}"
        pattern = f"downloading {mirror}/{FIRST_PATH} failed (ConnectError"
    elif failure == "wrong-hash":
        mirror = str(copy_mirror(weights, tmp_path / "mirror"))
        damaged = Path(mirror) / LAST.mirror_path
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0x01
        damaged.write_bytes(bytes(data))
        expected_error = CheckpointError
        pattern = (
            f"{damaged} has sha256 {file_sha256(damaged)}, but the catalogue expects {LAST.sha256}"
        )
    else:
        mirror = str(copy_mirror(weights, tmp_path / "mirror"))
        (Path(mirror) / LAST.mirror_path).unlink()
        pattern = f"{Path(mirror) / LAST.mirror_path} is missing from the mirror folder"
    before = snapshot(model_dir.root)
    with pytest.raises(expected_error, match=re.escape(pattern)) as info:
        fetch_members(model_dir, "mesonet", mirror=mirror, timeout_s=10)
    assert "\n" not in str(info.value)
    if expected_error is DownloadError:
        assert MIRROR_ENV in str(info.value)  # says what to do
    assert snapshot(model_dir.root) == before


def test_a_failure_while_recording_rolls_everything_back(
    model_dir: ModelDirectory, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each add_member is atomic, but an ensemble is four of them: a disk that fills up after
    # the second must not leave half the ensemble recorded.
    add_member = ModelDirectory.add_member
    calls = []

    def failing(self: ModelDirectory, *args: Any, **kwargs: Any) -> MemberSpec:
        calls.append(args[0].spec.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return add_member(self, *args, **kwargs)

    monkeypatch.setattr(ModelDirectory, "add_member", failing)
    before = snapshot(model_dir.root)
    with pytest.raises(OSError, match="No space left"):
        fetch_members(model_dir, "mesonet", mirror=str(weights))
    assert calls == MESONET[:3]
    assert snapshot(model_dir.root) == before


def test_a_stalled_server_times_out_cleanly(tmp_path: Path, server: LoopbackServer) -> None:
    server.route(f"/{FIRST_PATH}", stall_response())
    directory = ModelDirectory(tmp_path / "models")
    directory.init("paper")
    before = snapshot(directory.root)
    url = server.url(f"/{FIRST_PATH}")
    with pytest.raises(DownloadTimeoutError, match=re.escape(url)):
        fetch_members(directory, "meso4_df", mirror=server.base_url, timeout_s=0.5)
    assert snapshot(directory.root) == before


@pytest.mark.parametrize(
    ("name", "mirror", "pattern"),
    [
        ("mesonet5", None, "no known member or ensemble 'mesonet5'"),
        ("mesonet", "ftp://example.org/weights", "unsupported scheme 'ftp'"),
    ],
)
def test_bad_names_and_mirrors_are_config_errors(
    tmp_path: Path, name: str, mirror: str | None, pattern: str
) -> None:
    directory = ModelDirectory(tmp_path / "new" / "models")
    with pytest.raises(ConfigError, match=pattern):
        fetch_members(directory, name, mirror=mirror)
    assert not (tmp_path / "new").exists()
