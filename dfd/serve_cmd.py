"""``dfd serve``, ``dfd submit`` and ``dfd keys``: run the service, use it, manage its keys.

``dfd serve`` starts the embedded default on this machine (local Ray, SQLite and artefacts under
``$DFD_HOME``; a config file or ``DFD_*`` variables change any knob) and prints its URL. Bound to
a loopback address it may run open; on any other address it requires API keys and refuses to
start until one exists (``dfd keys create``). Starting and stopping the service on local Ray is
:mod:`serve.local` (which ``dfd bench serve`` and the service tests share).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from dfd.common import cli_errors, err_console, out_console
from pipeline.errors import (
    BadInputError,
    ConfigError,
    DfdError,
    DownloadError,
    MissingFileError,
)
from serve.local import start_service, stop_service

keys_app = typer.Typer(help="API keys of the service (stored hashed).", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Service config (YAML/JSON; default $DFD_CONFIG)."),
]
DEFAULT_SERVER = "http://127.0.0.1:8000"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# dfd serve


@cli_errors
def serve_command(
    host: Annotated[
        str, typer.Option(help="Address to bind (non-loopback needs keys).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    config: ConfigOpt = None,
) -> None:
    """Start the service on this machine (local Ray) and print its URL; Ctrl-C stops it."""
    from serve.config import load_config

    cfg = load_config(config)
    if not is_loopback(host):
        # Paper 5.4: access only with credentials; an open service stays on this machine.
        cfg = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"mode": "keys"})})
        keys = cfg.resolved().open_key_store()
        if not any(not k.revoked for k in keys.list_keys()):
            raise ConfigError(
                f"refusing to listen on {host} without API keys: create one with "
                "`dfd keys create NAME` (or bind 127.0.0.1)"
            )
    cfg = cfg.resolved()
    with err_console.status("starting Ray and loading the models (a minute or two)"):
        url = start_service(cfg, host, port)
    out_console.print(f"dfd service ready at {url}/  (API docs: {url}/docs)")
    if cfg.auth.mode == "keys":
        out_console.print("requests need 'Authorization: Bearer <key>' (dfd keys create NAME)")
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        err_console.print("stopping")
    finally:
        stop_service()


# ---------------------------------------------------------------------------------------------
# dfd submit


def _raise_problem(response: httpx.Response) -> None:
    """A problem+json answer as the matching typed error (so the CLI prints one line)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") or body.get("title") or f"HTTP {response.status_code}"
    kind = str(body.get("type", "")).rsplit("/", 1)[-1]
    err: DfdError
    if response.status_code in (401, 403):
        err = ConfigError(f"{detail} (give --key or set DFD_API_KEY)")
    elif kind.startswith("download") or response.status_code in (502, 504):
        err = DownloadError(detail)
    elif 400 <= response.status_code < 500:
        err = BadInputError(detail)
    else:
        err = DfdError(detail)
    raise err


@cli_errors
def submit_command(
    source: Annotated[
        str, typer.Argument(help="URL of an image/video, or a local file to upload.")
    ],
    server: Annotated[
        str, typer.Option(envvar="DFD_SERVER", help="The service's base URL.")
    ] = DEFAULT_SERVER,
    key: Annotated[
        str | None, typer.Option(envvar="DFD_API_KEY", help="API key (when the service needs one).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Analyse again despite a cached result.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="With --wait: write the result JSON here.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds.")
    ] = 3600,
) -> None:
    """Send a URL or a file to a running service; print the job, or with --wait its outcome."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = server.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        try:
            if "://" in source[:16]:
                response = http.post("/v1/jobs", json={"url": source, "force": force})
            else:
                path = Path(source)
                if not path.is_file():
                    raise MissingFileError(f"{path} is not a file (and not an http(s) URL)")
                with path.open("rb") as fh:
                    response = http.post(
                        "/v1/jobs",
                        params={"force": str(force).lower()},
                        files={"file": (path.name, fh, "application/octet-stream")},
                    )
        except httpx.HTTPError as exc:
            raise DownloadError(f"cannot reach the service at {base}: {exc}") from exc
        if response.status_code != 202:
            _raise_problem(response)
        created = response.json()
        cached = " (cached result)" if created.get("cached") else ""
        out_console.print(f"job {created['id']}: {created['url']}{cached}")
        if not wait:
            return
        job = _follow(http, created["id"], timeout)
        if job["status"] != "done":
            error = job.get("error") or {}
            raise DfdError(f"job {job['id']} {job['status']}: {error.get('detail', 'no detail')}")
        result = http.get(f"/v1/jobs/{job['id']}/result")
        if result.status_code != 200:
            _raise_problem(result)
        body = result.json()
        score = "none (no face)" if body["score"] is None else f"{body['score']:.3f}"
        out_console.print(
            f"DeepFake probability: {score} ({body['label']}), {body['source']['media_type']}, "
            f"{len(body['shots'])} shot(s), {body['faces_total']} face(s)"
        )
        for warning in body.get("warnings", []):
            err_console.print(f"[bold yellow]WARNING[/]: {warning}")
        out_console.print(f"result: {job['result_url']}")
        if json_out is not None:
            json_out.write_text(result.text)


def _follow(http: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with err_console.status("queued") as status:
        while True:
            response = http.get(f"/v1/jobs/{job_id}")
            if response.status_code != 200:
                _raise_problem(response)
            job: dict[str, Any] = response.json()
            p = job["progress"]
            count = f" {p['done']}/{p['total']}" if p["total"] else ""
            status.update(f"{job['status']}: {p['stage']}{count}")
            if job["status"] in ("done", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise DfdError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# dfd keys


def _key_store(config: Path | None) -> Any:
    from serve.config import load_config

    return load_config(config).resolved().open_key_store()


@keys_app.command("create")
@cli_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for (shown in lists and logs).")],
    rate: Annotated[
        int | None, typer.Option(help="Requests per minute (default: auth.default_rate_per_min).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from serve.config import load_config

    cfg = load_config(config)
    key_id, plaintext = (
        cfg.resolved()
        .open_key_store()
        .create_key(name, rate_per_min=rate or cfg.auth.default_rate_per_min)
    )
    err_console.print(f"created key {key_id} for {name!r}; it is shown once, store it now:")
    print(plaintext)


@keys_app.command("list")
@cli_errors
def keys_list(config: ConfigOpt = None) -> None:
    """All keys (never their secrets)."""
    table = Table(title="API keys")
    for col in ("id", "name", "created", "requests/min", "state"):
        table.add_column(col)
    for k in _key_store(config).list_keys():
        table.add_row(
            k.key_id,
            k.name,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            str(k.rate_per_min),
            "revoked" if k.revoked else "active",
        )
    out_console.print(table)


@keys_app.command("revoke")
@cli_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `dfd keys list`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key at once."""
    if not _key_store(config).revoke(key_id):
        raise BadInputError(f"no key with id {key_id}")
    out_console.print(f"revoked {key_id}")
