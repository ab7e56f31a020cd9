"""The models one evaluation actor (or a plain loop) scores with: loaded in the process, or the
deployments of a running Serve application, shared with the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from batch.config import EvaluationConfig
    from pipeline.model_access import PipelineModels


def build_models(config: EvaluationConfig) -> PipelineModels:
    """The models one actor (or a plain loop) scores with: local, or a Serve app's deployments."""
    if config.serve_app is not None:
        return serve_models(config.serve_app)
    from pipeline.model_access import LocalModels

    a = config.analysis
    return LocalModels.load(a.inference, a.faces, a.segmentation, a.embedder_weights)


#: Deployment names of the service's Serve application (serve/deployments.py); members are
#: named by :func:`serve.app.member_deployment_name`.
SERVE_DETECTOR = "FaceDetector"
SERVE_EMBEDDER = "FaceEmbedder"
SERVE_FEATURES = "RegionFeatures"
SERVE_RUNNER = "JobRunner"


def serve_models(app_name: str) -> PipelineModels:
    """:class:`~serve.remote_models.RemoteModels` over the deployments of the running Serve
    application ``app_name``: the batch run shares the serving replicas (warm, batched across
    callers) instead of loading its own copies.

    The member list comes from the application's job runner, which connected to the same
    deployments; every deployment is then asked what it runs, with blocking calls (Ray Data
    actors have no event loop).

    Raises:
        ConfigError: no such application, or it lacks one of the model deployments.
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from serve.app import member_deployment_name
    from serve.remote_models import ModelsDescription, RemoteModels

    def handle(name: str) -> Any:
        try:
            return serve.get_deployment_handle(name, app_name=app_name)
        except (RayServeException, KeyError, ValueError) as exc:
            raise ConfigError(
                f"Serve application {app_name!r} has no deployment {name!r} ({exc}); start the "
                "service with `dfd serve` or drop --serve-app"
            ) from exc

    runner = handle(SERVE_RUNNER).describe.remote().result()
    names = [str(m["name"]) for m in runner["models"]]
    detector, embedder = handle(SERVE_DETECTOR), handle(SERVE_EMBEDDER)
    features = handle(SERVE_FEATURES)
    members = [handle(member_deployment_name(n)) for n in names]
    det = detector.describe.remote().result()
    emb = embedder.describe.remote().result()
    feat = features.describe.remote().result()
    infos = [m.describe.remote().result()["info"] for m in members]
    description = ModelsDescription(
        face_detector_name=str(det["name"]),
        segmentation_method=str(feat["method"]),
        segmentation_threshold=float(feat["cut_threshold"]),
        has_embedder=bool(emb["available"]),
        members=tuple(infos),
        ensemble=str(runner.get("ensemble", "custom")),
    )
    return RemoteModels(detector, embedder, features, members, description)
