"""Every knob of the service, validated once: one pydantic model for the Serve application.

The same :class:`ServiceConfig` is the ``args`` of ``serve/config.yaml`` (``serve deploy``), the
embedded default of ``dfd serve`` and what tests build. Defaults run on a laptop: SQLite and a
local folder under ``$DFD_HOME``, no keys on loopback, one replica of everything, GPU fractions
that fit all eight model deployments on one GPU when there is one.

:func:`load_config` reads a YAML/JSON file (``$DFD_CONFIG``) and ``DFD_*`` environment variables
(``DFD_REDIS_URL``, nested with ``__``: ``DFD_AUTH__MODE=keys``); nothing else reads the
environment. :meth:`ServiceConfig.resolved` turns "default" paths into concrete ones where the
application is built, so every replica, wherever it runs, sees the same files.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pipeline.analyze import AnalysisSettings
from pipeline.errors import ConfigError
from pipeline.models.manifest import dfd_home, resolve_model_dir
from serve.auth import (
    KeyStore,
    MemoryRateLimiter,
    RateLimiter,
    RedisKeyStore,
    RedisRateLimiter,
    SQLiteKeyStore,
)
from serve.jobstore import JobStore, RecoveryPolicy
from serve.jobstore.redis import RedisJobStore
from serve.jobstore.sqlite import SQLiteJobStore
from serve.replicas import BatchSettings
from serve.storage import ArtefactStorage, LocalStorage, S3Storage

__all__ = [
    "AuthSettings",
    "AutoscalingSettings",
    "DeploymentsConfig",
    "JobSettings",
    "LocalStorageConfig",
    "MeverSettings",
    "ModelDeploymentSettings",
    "ReplicaSettings",
    "S3StorageConfig",
    "ServiceConfig",
    "load_config",
]

#: Environment variables with the ``DFD_`` prefix that are not configuration fields.
_NOT_CONFIG_ENV = frozenset({"DFD_CONFIG", "DFD_MODEL_DIR", "DFD_SHARED_DATA"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Deployments


class AutoscalingSettings(_Model):
    """Serve's ``autoscaling_config`` (Ray 2.60 names). ``min_replicas >= 1`` for the models:
    scaling a model from zero costs a 30-60 s cold start."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    #: The window over which ongoing requests are averaged, seconds (Ray's default).
    look_back_period_s: float = Field(30.0, gt=0)
    #: How often replicas and handles report them, seconds (Ray's default).
    metrics_interval_s: float = Field(10.0, gt=0)
    #: A custom policy's import path (``module:function``); None: Serve's, on ongoing requests.
    #: The job runner's is :data:`serve.autoscaling.JOB_QUEUE_POLICY` (on the job queue).
    policy: str | None = Field(None, pattern=r"^[\w.]+:\w+$")

    def serve_config(self) -> dict[str, Any]:
        """Serve's ``autoscaling_config``."""
        config = self.model_dump(exclude={"policy"})
        if self.policy is not None:
            config["policy"] = {"policy_function": self.policy}
        return config

    @classmethod
    def from_serve_config(cls, config: Mapping[str, Any]) -> AutoscalingSettings:
        fields = dict(config)
        policy = fields.pop("policy", None)
        if policy is not None:
            fields["policy"] = policy["policy_function"]
        return cls.model_validate(fields)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: min_replicas must be <= max_replicas")
        return self


class ReplicaSettings(_Model):
    """Placement and backpressure of one deployment.

    ``num_gpus`` is the GPU fraction each replica asks for *when GPUs are used* (see
    :attr:`ServiceConfig.gpus`); ``max_queued_requests`` bounds the queue in front of the
    replicas so that overload is answered at once instead of timing out (Ray's default, -1, is
    unbounded).
    """

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSettings | None = None
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0, le=1)
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    #: At most this many replicas on one node (None: no limit); 1 spreads the replicas over
    #: the nodes, so that losing one node leaves the others serving.
    max_replicas_per_node: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _target_reachable(self) -> ReplicaSettings:
        # Ray's guidance: max_ongoing_requests about 1.2-1.5x the autoscaling target. Below
        # the target, replicas never get the load the autoscaler waits for.
        a = self.autoscaling
        if a is not None and self.max_ongoing_requests < a.target_ongoing_requests:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                f"autoscaling.target_ongoing_requests ({a.target_ongoing_requests:g})"
            )
        return self

    def ray_actor_options(self, use_gpus: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if use_gpus and self.num_gpus > 0:
            options["num_gpus"] = self.num_gpus
        return options

    def deployment_options(self, use_gpus: bool) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        options: dict[str, Any] = {
            "ray_actor_options": self.ray_actor_options(use_gpus),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.serve_config()
        else:
            options["num_replicas"] = self.num_replicas
        return options

    def serve_entry(self, name: str, use_gpus: bool) -> dict[str, Any]:
        """This deployment as an entry of a Serve config's ``applications[].deployments[]``
        (what ``serve deploy`` applies over the code's options, and changes live)."""
        entry = {"name": name, **self.deployment_options(use_gpus)}
        if self.autoscaling is not None:
            entry["num_replicas"] = "auto"  # Serve's way to say: the autoscaler decides
        return entry

    @classmethod
    def from_serve_entry(cls, entry: Mapping[str, Any]) -> Self:
        """The settings behind a ``deployments[]`` entry (:meth:`serve_entry`'s inverse), so
        that a Serve YAML's entries are held to the same rules as ``args``.

        Raises:
            ValueError: an option this service does not set, or a rule broken.
        """
        fields: dict[str, Any] = {}
        # graceful_shutdown_timeout_s is the runner's, derived from its jobs settings.
        known = {"name", "ray_actor_options", "autoscaling_config", "num_replicas", "user_config"}
        known.add("graceful_shutdown_timeout_s")
        for key, value in entry.items():
            if key not in known:
                fields[key] = value  # same name here and in Serve
        actor = dict(entry.get("ray_actor_options") or {})
        fields["num_cpus"] = actor.pop("num_cpus", cls.model_fields["num_cpus"].default)
        fields["num_gpus"] = actor.pop("num_gpus", 0.0)
        if actor:
            raise ValueError(f"{entry.get('name')}: ray_actor_options {sorted(actor)} not used")
        if entry.get("autoscaling_config") is not None:
            fields["autoscaling"] = AutoscalingSettings.from_serve_config(
                entry["autoscaling_config"]
            )
        elif entry.get("num_replicas") not in (None, "auto"):
            fields["num_replicas"] = entry["num_replicas"]
        if "user_config" in entry:
            fields["batch"] = entry["user_config"]
        return cls.model_validate(fields)


class ModelDeploymentSettings(ReplicaSettings):
    """A model deployment: placement plus dynamic batching."""

    batch: BatchSettings = BatchSettings()

    def deployment_options(self, use_gpus: bool) -> dict[str, Any]:
        return {**super().deployment_options(use_gpus), "user_config": self.batch.model_dump()}


def _model(gpu: float, **kwargs: Any) -> ModelDeploymentSettings:
    return ModelDeploymentSettings(num_cpus=0.5, num_gpus=gpu, **kwargs)


class DeploymentsConfig(_Model):
    """One entry per deployment. ``members`` applies to each of the ensemble's members.

    Default GPU fractions: 0.15 + 0.1 + 0.1 + 5 x 0.12 = 0.95 of one GPU for the eight models.
    """

    ingress: ReplicaSettings = ReplicaSettings(
        num_cpus=0.25, max_ongoing_requests=200, max_queued_requests=1000
    )
    runner: ReplicaSettings = ReplicaSettings(num_cpus=0.5, max_ongoing_requests=100)
    detector: ModelDeploymentSettings = _model(0.15)
    embedder: ModelDeploymentSettings = _model(0.10)
    features: ModelDeploymentSettings = _model(0.10)
    members: ModelDeploymentSettings = _model(0.12)

    def model_gpu_total(self, n_members: int) -> float:
        """GPU fraction the model deployments ask for at their minimum replica counts."""

        def need(d: ReplicaSettings) -> float:
            replicas = d.autoscaling.min_replicas if d.autoscaling else d.num_replicas
            return d.num_gpus * replicas

        return (
            need(self.detector)
            + need(self.embedder)
            + need(self.features)
            + n_members * need(self.members)
        )


# ---------------------------------------------------------------------------------------------
# State, access, jobs


class LocalStorageConfig(_Model):
    """Artefacts in a folder (default ``$DFD_HOME/artefacts``)."""

    kind: Literal["local"] = "local"
    root: Path | None = None


class S3StorageConfig(_Model):
    """Artefacts in an S3-compatible bucket (MinIO as in paper 3.3). Credentials may also come
    from the usual AWS variables; ``endpoint_url`` ``None`` means AWS itself."""

    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3, max_length=63)
    endpoint_url: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"
    prefix: str = ""
    create_bucket: bool = False
    #: The bucket's address as clients reach it (a public MinIO or S3 URL). When set, artefact
    #: and media downloads are answered with a redirect to a URL presigned for it, valid
    #: ``download_expires_s``, so large bodies bypass the Serve proxy; None streams them
    #: through the service.
    public_endpoint_url: str | None = None
    download_expires_s: int = Field(900, ge=60, le=7 * 24 * 3600)
    #: With ``public_endpoint_url``, ``POST /v1/uploads`` hands out presigned PUT URLs valid
    #: this long: large uploads go to the bucket, not through the Serve proxy.
    upload_expires_s: int = Field(3600, ge=60, le=7 * 24 * 3600)


StorageConfig = Annotated[LocalStorageConfig | S3StorageConfig, Field(discriminator="kind")]


class AuthSettings(_Model):
    """API keys (paper 5.4: access for trusted partners only) and rate limits.

    ``mode: keys`` answers 401 without a valid key (``Authorization: Bearer <key>`` or
    ``X-API-Key``); each key has its own requests-per-minute limit. ``mode: off`` is for a
    service bound to loopback: requests are then limited per client address.
    """

    mode: Literal["off", "keys"] = "off"
    #: Limit given to keys created without one (``dfd keys create --rate``).
    default_rate_per_min: int = Field(120, ge=1)
    #: Per client address when ``mode`` is ``off``.
    anonymous_rate_per_min: int = Field(600, ge=1)
    #: Bucket size (requests allowed at once); ``None``: the per-minute rate.
    burst: int | None = Field(None, ge=1)
    #: Failed authentications allowed per client address and minute (at most this many at
    #: once): beyond, every request from the address is refused 429 until the bucket refills,
    #: valid keys included, so that keys cannot be guessed faster.
    failed_auth_per_min: int = Field(10, ge=1)


class JobSettings(_Model):
    """How the job runner works through the queue and recovers from crashes."""

    #: Jobs analysed at once per runner replica (each job also runs its shots in parallel).
    concurrency: int = Field(2, ge=1)
    #: Longest wait for new work when no submission wakes the runner.
    poll_interval_s: float = Field(0.5, gt=0)
    #: Running jobs are touched this often; a job untouched for ``stale_after_s`` belongs to a
    #: dead runner and is recovered.
    heartbeat_s: float = Field(5.0, gt=0)
    stale_after_s: float = Field(30.0, gt=0)
    recovery_interval_s: float = Field(10.0, gt=0)
    recovery_policy: RecoveryPolicy = RecoveryPolicy.REQUEUE
    max_attempts: int = Field(3, ge=1)
    #: New submissions are refused (503 overloaded) while this many jobs wait.
    max_queued_jobs: int = Field(1000, ge=0)
    #: Cached results expire after this many seconds; ``None``: never (until deleted).
    cache_ttl_s: float | None = Field(None, gt=0)
    #: Progress is written at most this often (stage changes are always written).
    progress_interval_s: float = Field(0.5, ge=0)
    #: Keep the analysed medium as an artefact (needed by the MeVer ``video_path``).
    keep_source: bool = True
    #: On a graceful stop, running jobs get this long before they are put back in the queue.
    shutdown_grace_s: float = Field(10.0, ge=0)
    #: A model deployment must answer one call within this (else the job fails that step).
    model_call_timeout_s: float = Field(300.0, gt=0)
    #: A running job whose progress has not moved for this long is stuck: its heartbeat stops
    #: (so that recovery hands it to a runner again) and the runner reports itself unhealthy
    #: (so that Serve replaces it). Longer than any one step: a model call, a download.
    stall_after_s: float = Field(900.0, gt=0)
    #: Put a call's face crops in the object store once for all ensemble members (each member
    #: cuts its own square on its replica). Off: each member's request carries its own copy, as
    #: before; kept for ``dfd bench serve``'s side-by-side comparison.
    share_member_crops: bool = True

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> JobSettings:
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError("stale_after_s must be at least twice heartbeat_s")
        if self.stall_after_s <= self.heartbeat_s:
            raise ValueError("stall_after_s must be longer than heartbeat_s")
        return self


_LOOPBACK_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


class MeverSettings(_Model):
    """The MeVer API as the InVID-WeVerify plug-in calls it (off unless enabled).

    The plug-in sends no credentials, so these routes are guarded otherwise: the client address
    must be in ``allowed_networks``, and a request carrying an ``Origin`` header must come from
    one of ``allowed_origins`` when that list is not empty (e.g. the extension's
    ``chrome-extension://<id>``). They are rate limited per client address.
    """

    enabled: bool = False
    base_path: str = Field("/mever/", pattern=r"^/([A-Za-z0-9._~-]+/)*$")
    allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: list(_LOOPBACK_NETWORKS)
    )
    allowed_origins: list[str] = Field(default_factory=list)
    rate_per_min: int = Field(120, ge=1)


# ---------------------------------------------------------------------------------------------
# The whole service


class ServiceConfig(_Model):
    """The service. Paths left ``None`` are filled by :meth:`resolved`."""

    #: Root of local state: SQLite file, artefacts folder (default ``$DFD_HOME``).
    home: Path | None = None
    #: Redis for jobs, cache, keys and rate limits (a cluster); ``None``: SQLite + memory.
    redis_url: str | None = None
    redis_prefix: str = "dfd:"
    #: SQLite file of jobs, cache and keys when there is no Redis (default ``<home>/service.db``).
    sqlite_path: Path | None = None
    storage: StorageConfig = LocalStorageConfig()
    auth: AuthSettings = AuthSettings()
    jobs: JobSettings = JobSettings()
    mever: MeverSettings = MeverSettings()
    #: Largest upload accepted, bytes.
    max_upload_bytes: int = Field(1024**3, gt=0)
    #: Requests one ingress replica handles at once; beyond, ``503 overloaded`` (a problem, with
    #: ``Retry-After``) at once. Keep it below the Ingress deployment's ``max_ongoing_requests``
    #: so that the service refuses before Serve's proxy answers its own plain-text 503.
    max_concurrent_requests: int = Field(180, ge=1)
    #: Base of absolute URLs in answers when behind a reverse proxy (e.g.
    #: ``https://dfd.example.org``); ``None``: from each request's ``Host``.
    public_base_url: str | None = Field(None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    #: ``auto``: use GPU fractions when the Ray cluster has GPUs; ``on``/``off`` force it.
    gpus: Literal["auto", "on", "off"] = "auto"
    #: Where models run inside a replica; ``auto``: CUDA when the replica was given a GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: The analysis (paper 3.1 numbers); shots are processed in parallel in the service.
    analysis: AnalysisSettings = AnalysisSettings(shot_workers=4)
    #: A report folder written by ``dfd report`` (or a folder of them, newest used): the model
    #: card at ``/v1/model-card`` takes its figures from there; ``None``: figures missing.
    model_card_report: Path | None = None
    deployments: DeploymentsConfig = DeploymentsConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        if self.mever.enabled and not self.analysis.galleries:
            raise ValueError("mever.enabled needs analysis.galleries (its reports link pictures)")
        if self.mever.enabled and not self.jobs.keep_source:
            raise ValueError("mever.enabled needs jobs.keep_source (its reports link the video)")
        return self

    def resolved(self) -> ServiceConfig:
        """A copy with concrete paths: home, SQLite file, artefacts folder, model directory."""
        home = (self.home or dfd_home()).expanduser().resolve()
        storage = self.storage
        if isinstance(storage, LocalStorageConfig) and storage.root is None:
            storage = LocalStorageConfig(root=home / "artefacts")
        inference = self.analysis.inference
        model_dir = resolve_model_dir(inference.model_dir).root.expanduser().resolve()
        analysis = self.analysis.model_copy(
            update={"inference": inference.model_copy(update={"model_dir": model_dir})}
        )
        return self.model_copy(
            update={
                "home": home,
                "sqlite_path": (self.sqlite_path or home / "service.db").expanduser().resolve(),
                "storage": storage,
                "analysis": analysis,
            }
        )

    # -- the backends it names ------------------------------------------------------------------

    def _sqlite_file(self) -> Path:
        return self.sqlite_path or (self.home or dfd_home()) / "service.db"

    def open_job_store(self) -> JobStore:
        """Redis when ``redis_url`` is set, else the SQLite file."""
        if self.redis_url:
            return RedisJobStore(self.redis_url, prefix=self.redis_prefix)
        return SQLiteJobStore(self._sqlite_file())

    def open_key_store(self) -> KeyStore:
        if self.redis_url:
            return RedisKeyStore(self.redis_url, prefix=self.redis_prefix)
        return SQLiteKeyStore(self._sqlite_file())

    def open_rate_limiter(self) -> RateLimiter:
        """Shared by all ingress replicas with Redis; per replica (in memory) without."""
        if self.redis_url:
            return RedisRateLimiter(self.redis_url, prefix=self.redis_prefix)
        return MemoryRateLimiter()

    def open_storage(self) -> ArtefactStorage:
        storage = self.storage
        if isinstance(storage, S3StorageConfig):
            s3 = S3Storage(
                storage.bucket,
                endpoint_url=storage.endpoint_url,
                access_key=storage.access_key.get_secret_value() if storage.access_key else None,
                secret_key=storage.secret_key.get_secret_value() if storage.secret_key else None,
                region=storage.region,
                prefix=storage.prefix,
                public_endpoint_url=storage.public_endpoint_url,
                download_expires_s=storage.download_expires_s,
                upload_expires_s=storage.upload_expires_s,
            )
            if storage.create_bucket:
                s3.ensure_bucket()
            return s3
        return LocalStorage(storage.root or (self.home or dfd_home()) / "artefacts")

    def use_gpus(self) -> bool:
        """Whether deployments ask for their GPU fractions (``gpus: auto`` looks at the Ray
        cluster when connected, else at this machine)."""
        if self.gpus != "auto":
            return self.gpus == "on"
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0)) > 0
        import torch

        return bool(torch.cuda.is_available())


_DEFAULTS = ServiceConfig()


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``DFD_A__B=value`` -> ``{"a": {"b": value}}`` for top-level fields of ServiceConfig;
    values are parsed as YAML scalars/collections (``true``, ``2``, ``[a, b]``)."""
    fields = set(ServiceConfig.model_fields)
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("DFD_") or name in _NOT_CONFIG_ENV:
            continue
        path = name[4:].lower().split("__")
        if path[0] not in fields or not all(path):
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list) and not raw.lstrip().startswith(("{", "[")):
            value = raw  # "dfd:" or "a: b" is a string here, not YAML's block mapping
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name} conflicts with another DFD_ variable")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping by mapping. A mapping whose ``kind`` changes (storage:
    local -> s3) replaces the old one: the other kind's fields would not validate."""
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(old, dict)
            and ("kind" not in value or "kind" not in old or value["kind"] == old["kind"])
        ):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """The configuration from a file, then ``base``, then ``DFD_*`` variables, then
    ``overrides`` (each wins over the one before). ``path`` defaults to ``$DFD_CONFIG``; a file
    may be YAML or JSON and may be a whole ``serve deploy`` config, whose first application's
    ``args`` are used. ``base`` is, in a cluster, the ``args`` of the Serve YAML.

    Raises:
        ConfigError: unreadable file or invalid values (the message names the field).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("DFD_CONFIG"):
        path = Path(env["DFD_CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
            loaded = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the service config {path}: {exc}") from exc
        if isinstance(loaded, dict) and "applications" in loaded:
            loaded = (loaded["applications"] or [{}])[0].get("args", {})
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings")
        data = loaded or {}
    data = _merge(data, base or {})
    data = _merge(data, _env_overrides(env))
    data = _merge(data, overrides or {})
    try:
        # Over the service's own defaults, so that a partial section keeps the rest of the
        # default it refines: `deployments: {members: {num_cpus: 1}}` must not reset the members'
        # GPU fraction to the class default 0.0.
        return ServiceConfig.model_validate(_merge(_DEFAULTS.model_dump(), data))
    except ValueError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"invalid service config: {' '.join(first[:4])}") from exc
