"""``dfd keys``, ``dfd submit`` and the refusal of ``dfd serve`` to run open on a network.

(``dfd serve``'s start-up code, :func:`serve.local.start_service`, is what the session's Serve
fixture runs.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfd.cli import app
from pipeline.model_access import LocalModels
from serve.config import AuthSettings, ServiceConfig
from tests.serve.conftest import analysis_settings, local_service
from tests.support.httpserver import LoopbackServer, file_response, status_response

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DFD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DFD_CONFIG", raising=False)
    return tmp_path / "home"


def test_keys_create_list_revoke(home: Path) -> None:
    created = runner.invoke(app, ["keys", "create", "newsroom", "--rate", "30"])
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[-1]
    key_id = re.fullmatch(r"dfd_([0-9a-f]{12})_\S+", plaintext).group(1)  # type: ignore[union-attr]
    # Stored hashed: the secret is nowhere in the database file.
    assert plaintext.encode() not in (home / "service.db").read_bytes()
    store = ServiceConfig(home=home).resolved().open_key_store()
    record = store.verify(plaintext)
    assert record is not None and record.rate_per_min == 30 and record.name == "newsroom"
    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert plaintext not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).stdout
    assert store.verify(plaintext) is None
    missing = runner.invoke(app, ["keys", "revoke", "000000000000"])
    assert missing.exit_code == 2 and "no key" in missing.output


def test_serve_refuses_a_network_address_without_keys(home: Path) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 4
    assert "without API keys" in result.output and "dfd keys create" in result.output


def test_submit_file_and_url_and_wait(
    tmp_path: Path, home: Path, model_dir: Path, local_models: LocalModels, shared_data: Path
) -> None:
    cfg = ServiceConfig(
        home=home, auth=AuthSettings(mode="keys"), analysis=analysis_settings(model_dir)
    )
    _, key = cfg.resolved().open_key_store().create_key("cli")
    image = shared_data / "faces" / "fr_obama.jpg"
    with LoopbackServer() as media, local_service(cfg, local_models) as svc:
        url = media.route("/obama.jpg", file_response(image, "image/jpeg"))
        missing = media.route("/missing.jpg", status_response(404))
        common = ["--server", svc.base_url, "--key", key]
        out = tmp_path / "result.json"
        done = runner.invoke(app, ["submit", str(image), *common, "--wait", "--json", str(out)])
        assert done.exit_code == 0, done.output
        assert "DeepFake probability" in done.stdout and "1 face(s)" in done.stdout
        result = json.loads(out.read_text())
        assert result["source"]["path"] == image.name and result["faces_total"] == 1
        queued = runner.invoke(app, ["submit", url, *common])
        assert queued.exit_code == 0 and re.search(r"job [A-Za-z0-9_-]+: http", queued.stdout)
        failed = runner.invoke(app, ["submit", missing, *common, "--wait"])
        assert failed.exit_code == 1 and "HTTP 404" in failed.output
        no_key = runner.invoke(app, ["submit", url, "--server", svc.base_url])
        assert no_key.exit_code == 4 and "API key" in no_key.output
        absent = runner.invoke(app, ["submit", str(tmp_path / "nope.mp4"), *common])
        assert absent.exit_code == 2
