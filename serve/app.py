"""The typed application builder: ``build_app(ServiceConfig) -> Application``.

``serve deploy serve/config.yaml`` and ``serve run serve.app:build_app`` call it with the YAML's
``args``, validated as a :class:`~serve.config.ServiceConfig` (Serve does that because the
parameter is annotated with the model; this module therefore must not use postponed
annotations). ``dfd serve`` and the tests call it directly.

The graph: eight model deployments (MTCNN, face embedder, region features, one per ensemble
member) -> the ``JobRunner`` (claims jobs, runs the analysis over handles) -> the ``Ingress``
(FastAPI). Paths are resolved here, once, so every replica on every node sees the same files.
"""

import logging
import os
from typing import Any, cast

from ray.serve import Application, Deployment

from pipeline.models.member import pin_ensemble, resolve_ensemble
from serve.config import ServiceConfig, load_config
from serve.deployments import (
    FaceDetectorDeployment,
    FaceEmbedderDeployment,
    IngressDeployment,
    JobRunnerDeployment,
    MemberDeployment,
    RegionFeaturesDeployment,
    model_aux_weights,
)

__all__ = [
    "APP_NAME",
    "build_app",
    "build_app_from_env",
    "deployment_entries",
    "member_deployment_name",
    "model_deployment_names",
]

log = logging.getLogger(__name__)

#: The application's name in ``serve/config.yaml``, ``dfd serve`` and the tests.
APP_NAME = "dfd"


def _deployment(decorated: object) -> Deployment:
    # @serve.deployment returns a Deployment; type checkers still see the class.
    return cast(Deployment, decorated)


def member_deployment_name(member: str) -> str:
    return f"Member_{member}"


def model_deployment_names(config: ServiceConfig) -> list[str]:
    """The eight (or, with another manifest, 3 + members) model deployments' names."""
    cfg = config.resolved()
    return ["FaceDetector", "FaceEmbedder", "RegionFeatures"] + [
        member_deployment_name(n) for n in _member_names(cfg)
    ]


#: Seconds Serve waits for a stopping job runner beyond its ``jobs.shutdown_grace_s``.
RUNNER_SHUTDOWN_MARGIN_S = 5.0


def _runner_grace_s(cfg: ServiceConfig) -> float:
    return cfg.jobs.shutdown_grace_s + RUNNER_SHUTDOWN_MARGIN_S


def _member_names(cfg: ServiceConfig) -> list[str]:
    _, _, specs = resolve_ensemble(cfg.analysis.inference)
    return [s.name for s in specs]


def _pin_ensemble(cfg: ServiceConfig) -> ServiceConfig:
    """``cfg`` with the ensemble resolved once here (``$DFD_ENSEMBLE``, the manifest's default
    or ``auto``), so that every replica, wherever it starts, loads the same members."""
    inference = pin_ensemble(cfg.analysis.inference)
    analysis = cfg.analysis.model_copy(update={"inference": inference})
    return cfg.model_copy(update={"analysis": analysis})


def build_app(config: ServiceConfig) -> Application:
    """The whole service as one Serve application (run it with ``serve.run(..., name=APP_NAME)``).

    Raises:
        ConfigError: no model manifest where the configuration points.
    """
    cfg = _pin_ensemble(config.resolved())
    use_gpus = cfg.use_gpus()
    d = cfg.deployments
    names = _member_names(cfg)
    if use_gpus:
        total = d.model_gpu_total(len(names))
        if total > 1:
            log.warning("the model deployments ask for %.2f GPUs; they need more than one", total)
    embed_weights, seg_weights = model_aux_weights(cfg)
    detector = (
        _deployment(FaceDetectorDeployment)
        .options(**d.detector.deployment_options(use_gpus))
        .bind(cfg.analysis.faces, cfg.device)
    )
    embedder = (
        _deployment(FaceEmbedderDeployment)
        .options(**d.embedder.deployment_options(use_gpus))
        .bind(embed_weights, cfg.device)
    )
    features = (
        _deployment(RegionFeaturesDeployment)
        .options(**d.features.deployment_options(use_gpus))
        .bind(cfg.analysis.segmentation, seg_weights, cfg.device)
    )
    members = [
        _deployment(MemberDeployment)
        .options(name=member_deployment_name(n), **d.members.deployment_options(use_gpus))
        .bind(n, cfg.analysis.inference, cfg.device)
        for n in names
    ]
    runner = (
        _deployment(JobRunnerDeployment)
        .options(
            **d.runner.deployment_options(False),
            # A rolling update or scale-down hands running jobs back to the queue after the
            # runner's own grace; Serve must not kill the replica before that.
            graceful_shutdown_timeout_s=_runner_grace_s(cfg),
        )
        .bind(cfg, detector, embedder, features, members)
    )
    return (
        _deployment(IngressDeployment)
        .options(**d.ingress.deployment_options(False))
        .bind(cfg, runner)
    )


def deployment_entries(config: ServiceConfig) -> list[dict[str, Any]]:
    """``config.deployments`` as the ``deployments[]`` entries of a Serve config, one per
    deployment of the application (members by name: ``Member_<name>``).

    Serve applies these over the options the code sets and changes them live: replica counts,
    autoscaling, queue limits and ``user_config`` (batch sizes, through ``reconfigure``) without
    restarting a replica; CPU and GPU shares restart only that deployment's replicas. Settings
    left in the application's ``args`` are hashed into its code version, so changing them there
    redeploys every replica, the job runner's included.
    """
    cfg = _pin_ensemble(config.resolved())
    gpus, d = cfg.use_gpus(), cfg.deployments
    runner = d.runner.serve_entry("JobRunner", False)
    runner["graceful_shutdown_timeout_s"] = _runner_grace_s(cfg)
    return [
        d.ingress.serve_entry("Ingress", False),
        runner,
        d.detector.serve_entry("FaceDetector", gpus),
        d.embedder.serve_entry("FaceEmbedder", gpus),
        d.features.serve_entry("RegionFeatures", gpus),
        *(d.members.serve_entry(member_deployment_name(n), gpus) for n in _member_names(cfg)),
    ]


def build_app_from_env(args: dict[str, Any] | None = None) -> Application:
    """The builder of clusters (``cluster.yaml``, the KubeRay ``RayService``): the YAML's
    ``args`` (over ``$DFD_CONFIG`` if set), overridden by ``DFD_*`` variables of the environment
    Serve builds the application in (the node's, or the application's ``runtime_env``). One
    image and one Serve YAML then run anywhere; Redis, S3 and secrets come from the platform.

    Raises:
        ConfigError: invalid settings (the message names the field).
    """
    return build_app(load_config(base=args or {}, environ=os.environ))
