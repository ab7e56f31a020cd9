"""The service configuration and ``serve/config.yaml``: import paths resolve, arguments validate,
every knob is in the YAML, and the built application has the deployments it describes."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from ray.serve._private.build_app import build_app as serve_build
from ray.serve.schema import ServeDeploySchema

from pipeline.errors import ConfigError
from serve.app import (
    APP_NAME,
    build_app,
    build_app_from_env,
    deployment_entries,
    model_deployment_names,
)
from serve.config import (
    JobSettings,
    LocalStorageConfig,
    ModelDeploymentSettings,
    S3StorageConfig,
    ServiceConfig,
    load_config,
)
from tests.support.serveconfig import deployed, entry_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG_YAML = REPO / "serve" / "config.yaml"


def yaml_app() -> dict[str, Any]:
    deploy = yaml.safe_load(CONFIG_YAML.read_text())
    ServeDeploySchema.model_validate(deploy)  # the file is what `serve deploy` accepts
    (app,) = deploy["applications"]
    return app  # type: ignore[no-any-return]


def knob_paths(model: type[BaseModel], value: Any, prefix: str = "") -> set[str]:
    """Every field path of ``model`` (descending into nested settings models)."""
    paths = set()
    for name in model.model_fields:
        path = f"{prefix}{name}"
        paths.add(path)
        sub = getattr(value, name)
        if isinstance(sub, BaseModel):
            paths |= knob_paths(type(sub), sub, path + ".")
    return paths


def present_paths(data: Any, prefix: str = "") -> set[str]:
    if not isinstance(data, dict):
        return set()
    paths = set()
    for key, sub in data.items():
        paths.add(f"{prefix}{key}")
        paths |= present_paths(sub, f"{prefix}{key}.")
    return paths


def test_config_yaml_import_path_and_args_validate() -> None:
    app = yaml_app()
    assert app["name"] == APP_NAME
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert builder is build_app_from_env
    # Serve hands the args over as a mapping (the builder validates them itself, with the
    # environment on top); build_app takes the validated model.
    (param,) = inspect.signature(builder).parameters.values()
    assert "dict" in str(param.annotation)
    (param,) = inspect.signature(build_app).parameters.values()
    assert param.annotation is ServiceConfig
    config = ServiceConfig.model_validate(app["args"])
    assert load_config(base=app["args"], environ={}) == config
    assert config.redis_url and isinstance(config.storage, S3StorageConfig)
    assert config.deployments.model_gpu_total(5) <= 1.0


def test_config_yaml_lists_every_knob() -> None:
    """Every setting of the application is in its ``args``, except the deployments': those are
    Serve's ``deployments[]`` entries (changed live, not hashed into the code version)."""
    app = yaml_app()
    args = app["args"]
    assert "deployments" not in args
    config = ServiceConfig.model_validate(args)
    knobs = {k for k in knob_paths(ServiceConfig, config) if not k.startswith("deployments")}
    missing = knobs - present_paths(args)
    assert not missing, f"serve/config.yaml lacks {sorted(missing)}"
    # Each entry sets every option the service sets for its deployment: exactly what the
    # settings it stands for give back.
    for entry in app["deployments"]:
        settings = entry_settings(entry)
        expected = settings.serve_entry(entry["name"], use_gpus=True)
        if entry["name"] == "JobRunner":
            expected["graceful_shutdown_timeout_s"] = config.jobs.shutdown_grace_s + 5.0
        assert entry == expected, entry["name"]


def test_config_yaml_builds_the_application(tmp_path: Path, model_dir: Path) -> None:
    app = yaml_app()
    args = app["args"]
    args["home"] = str(tmp_path / "home")
    args["analysis"]["inference"]["model_dir"] = str(model_dir)
    config = ServiceConfig.model_validate(args)
    built = serve_build(build_app(config), name=APP_NAME)
    by_name = {d.name: d for d in built.deployments}
    models = model_deployment_names(config)
    assert len(models) == 8
    assert set(by_name) == {*models, "JobRunner", "Ingress"}
    assert built.ingress_deployment_name == "Ingress"
    # The YAML's entries name exactly the application's deployments (Serve refuses others)...
    entries = {e["name"]: e for e in app["deployments"]}
    assert set(entries) == set(by_name)
    # ... and are what deployment_entries writes for the same settings.
    service = deployed(config, app["deployments"])
    assert {e["name"]: e for e in deployment_entries(service)} == entries
    assert service.deployments.model_gpu_total(len(models) - 3) == pytest.approx(0.95)
    member = entries[models[-1]]
    assert member["user_config"] == {
        "enabled": True,
        "max_batch_size": 64,
        "batch_wait_timeout_s": 0.02,
    }
    assert member["max_ongoing_requests"] == 12 and member["num_replicas"] == "auto"
    # Serve waits for the runner to hand its jobs back before it kills the replica.
    runner = by_name["JobRunner"]
    assert entries["JobRunner"]["max_replicas_per_node"] == 1
    grace = runner._deployment_config.graceful_shutdown_timeout_s
    assert grace == config.jobs.shutdown_grace_s + 5.0
    assert entries["JobRunner"]["graceful_shutdown_timeout_s"] == grace


def test_a_broken_deployment_entry_is_refused() -> None:
    (member,) = [e for e in yaml_app()["deployments"] if e["name"] == "Member_m5_effv2m"]
    slow = {**member, "max_ongoing_requests": 4}  # below the autoscaling target (8)
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        entry_settings(slow)
    with pytest.raises(ValueError, match="not used"):
        entry_settings({**member, "ray_actor_options": {"num_cpus": 1, "memory": 2**30}})


def test_gpu_fractions_are_dropped_without_gpus(tmp_path: Path, model_dir: Path) -> None:
    config = load_config(
        environ={},
        overrides={
            "home": str(tmp_path),
            "gpus": "off",
            "analysis": {"inference": {"model_dir": str(model_dir)}},
        },
    )
    built = serve_build(build_app(config), name=APP_NAME)
    assert all("num_gpus" not in d.ray_actor_options for d in built.deployments)


def test_load_config_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "dfd.yaml"
    path.write_text(yaml.safe_dump({"jobs": {"concurrency": 3}, "auth": {"mode": "keys"}}))
    env = {
        "DFD_CONFIG": str(path),
        "DFD_HOME": str(tmp_path / "h"),
        "DFD_REDIS_URL": "redis://127.0.0.1:6379/2",
        "DFD_JOBS__MAX_QUEUED_JOBS": "7",
        "DFD_MEVER__ENABLED": "true",
        "DFD_MEVER__ALLOWED_ORIGINS": "[chrome-extension://abc]",
        "DFD_MODEL_DIR": "/not/a/config/field",
    }
    config = load_config(environ=env)
    assert config.home == tmp_path / "h"
    assert config.redis_url == "redis://127.0.0.1:6379/2"
    assert (config.jobs.concurrency, config.jobs.max_queued_jobs) == (3, 7)
    assert config.auth.mode == "keys"
    assert config.mever.enabled and config.mever.allowed_origins == ["chrome-extension://abc"]
    # A whole `serve deploy` file works too (its first application's args).
    assert load_config(CONFIG_YAML, environ={}).redis_url
    with pytest.raises(ConfigError, match="jobs"):
        load_config(environ={"DFD_JOBS__CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})
    # A partial section refines the service's defaults instead of resetting them.
    partial = load_config(environ={}, base={"deployments": {"members": {"num_cpus": 1}}})
    assert partial.deployments.members.num_cpus == 1
    assert partial.deployments.members.num_gpus == ServiceConfig().deployments.members.num_gpus > 0
    assert partial.analysis.shot_workers == ServiceConfig().analysis.shot_workers
    # Storage switched to S3 by variables keeps the file's other storage fields.
    s3 = load_config(
        environ={"DFD_STORAGE__KIND": "s3", "DFD_STORAGE__BUCKET": "bkt"},
        base={"storage": {"prefix": "eu"}},
    ).storage
    assert isinstance(s3, S3StorageConfig) and (s3.bucket, s3.prefix) == ("bkt", "eu")
    # A value with a colon stays a string (YAML would read "dfd:" as a mapping).
    assert load_config(environ={"DFD_REDIS_PREFIX": "dfd-eu:"}).redis_prefix == "dfd-eu:"


def test_cluster_builder_puts_environment_over_the_yaml_args(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve.app:build_app_from_env`` (cluster.yaml, KubeRay): one Serve YAML, the platform's
    ``DFD_*`` variables on top."""
    from ray.serve import Application

    args = {
        "home": str(tmp_path / "home"),
        "redis_url": "redis://redis.internal:6379/0",
        "jobs": {"concurrency": 3},
        "analysis": {"inference": {"model_dir": str(model_dir)}},
    }
    monkeypatch.setenv("DFD_JOBS__CONCURRENCY", "5")
    monkeypatch.setenv("DFD_REDIS_URL", "redis://127.0.0.1:6379/3")
    assert load_config(base=args, environ=os.environ).jobs.concurrency == 5
    assert isinstance(build_app_from_env(args), Application)
    monkeypatch.setenv("DFD_JOBS__CONCURRENCY", "0")
    with pytest.raises(ConfigError, match="jobs"):
        build_app_from_env(args)


def test_resolved_paths_and_validation(tmp_path: Path, model_dir: Path) -> None:
    config = ServiceConfig(
        home=tmp_path, analysis={"inference": {"model_dir": model_dir}}
    ).resolved()
    assert config.sqlite_path == tmp_path / "service.db"
    assert isinstance(config.storage, LocalStorageConfig)
    assert config.storage.root == tmp_path / "artefacts"
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ModelDeploymentSettings(
            max_ongoing_requests=4, autoscaling={"target_ongoing_requests": 8, "max_replicas": 2}
        )
    with pytest.raises(ValueError, match="heartbeat"):
        JobSettings(heartbeat_s=10, stale_after_s=15)
    with pytest.raises(ValueError, match="galleries"):
        ServiceConfig(mever={"enabled": True}, analysis={"galleries": False})
