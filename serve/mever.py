"""The MeVer API as the InVID-WeVerify verification plug-in calls it (paper 5.4).

Newsrooms reach the original service through that browser plug-in; these routes let it point at
this service instead. Its client code fixes the contract, so the shapes here are exact:

- ``POST {BASE}videos/jobs?url=...&services=...`` (or ``images/jobs``), no body or a multipart
  body whose only field is ``file``. ``services`` is a comma-separated list of
  ``deepfake_video`` and ``faceswap_fsfm`` (video reports) and ``faceswap_ens_mever`` (image
  report). The client reads only ``id`` from the answer and puts it into later paths unescaped
  (ids are ``[A-Za-z0-9_-]``).
- ``GET {BASE}videos/jobs/{id}``: ``{"id", "status"}`` with status exactly ``PROCESSING``
  (queued or running), ``COMPLETED`` or ``FAILED`` (the client stops on anything but the first
  two).
- ``GET {BASE}videos/reports/{id}``: ``{"<service>_report": ...}`` for every requested service.
  Video: ``{"prediction", "video_path", "results": [{"shot_start", "shot_end", "shot_image",
  "prediction", "face_image_paths", "face_predictions"}]}``; image: ``{"prediction", "info":
  [{"bbox": {"top", "left", "bottom", "right"}, "prediction"}]}`` with boxes as fractions of the
  image. Predictions are numbers in [0, 1]; a shot (or medium) without faces reports 0.0, the
  plug-in having no way to show "no score". The overall prediction is the top shot's.
- Pictures and the video are linked as absolute URLs under ``{BASE}artefacts/{id}/...``,
  served with HTTP ``Range`` (the plug-in's player seeks).

The plug-in sends no credentials: the routes are off unless ``mever.enabled``, and then limited
to client addresses in ``mever.allowed_networks`` (and, when set, to ``mever.allowed_origins``
for requests carrying an ``Origin``), with a per-address rate limit. Answers are always
``application/json`` (errors ``application/problem+json``), never redirects.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.aggregate import argmax_or_none, max_or_none, track_score
from pipeline.models.importers.fsfm import FSFM_SOURCE
from serve.config import MeverSettings
from serve.context import ApiContext
from serve.jobs import source_artefact
from serve.jobs_service import JobsService
from serve.jobstore import Job, JobStatus
from serve.problems import ProblemError

__all__ = [
    "DEFAULT_SERVICES",
    "IMAGE_SERVICES",
    "VIDEO_SERVICES",
    "fsfm_members",
    "image_report",
    "mever_router",
    "mever_status",
    "rescored",
    "video_report",
]

VIDEO_SERVICES = frozenset({"deepfake_video", "faceswap_fsfm"})
IMAGE_SERVICES = frozenset({"faceswap_ens_mever"})
DEFAULT_SERVICES = {"videos": ["deepfake_video"], "images": ["faceswap_ens_mever"]}

MediaRoute = Literal["videos", "images"]


def mever_status(status: JobStatus) -> str:
    if status == JobStatus.DONE:
        return "COMPLETED"
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return "PROCESSING"
    return "FAILED"


def _prediction(score: Any) -> float:
    return 0.0 if score is None else float(score)


def _fraction(value: float, size: int) -> float:
    return min(max(float(value) / size, 0.0), 1.0) if size > 0 else 0.0


def _top_shot(result: dict[str, Any]) -> dict[str, Any] | None:
    shots = result.get("shots", [])
    top = result.get("top_shot")
    for shot in shots:
        if shot.get("index") == top:
            return shot
    return shots[0] if shots else None


def fsfm_members(result: dict[str, Any]) -> list[str]:
    """Names of the result's members imported from FSFM checkpoints (``faceswap_fsfm``)."""
    return [
        m["name"]
        for m in result.get("models", [])
        if FSFM_SOURCE in str(m.get("source", "")) and m.get("weights") == "trained"
    ]


def rescored(result: dict[str, Any], members: list[str]) -> dict[str, Any]:
    """``result`` with every face scored by the mean of ``members`` alone, and tracks, shots
    and the medium re-aggregated by the pipeline's rules (track mean, shot max, medium max)."""
    shots = []
    for shot in result.get("shots", []):
        clusters = []
        for cluster in shot.get("clusters", []):
            faces = [
                {**f, "score": sum(f["member_scores"][m] for m in members) / len(members)}
                for f in cluster["faces"]
            ]
            clusters.append(
                {**cluster, "faces": faces, "score": track_score([f["score"] for f in faces])}
            )
        shots.append({**shot, "clusters": clusters, "score": max_or_none(
            [c["score"] for c in clusters]
        )})  # fmt: skip
    scores = [s["score"] for s in shots]
    top = argmax_or_none(scores)
    return {
        **result,
        "shots": shots,
        "score": max_or_none(scores),
        "top_shot": shots[top]["index"] if top is not None else None,
    }


def video_report(result: dict[str, Any], video_url: str) -> dict[str, Any]:
    """A video service's report from a result whose artefact paths are absolute URLs."""
    shots = result.get("shots", [])
    fallback = next(
        (
            s.get("gallery") or s.get("thumbnail")
            for s in shots
            if s.get("gallery") or s.get("thumbnail")
        ),
        video_url,
    )
    rows = []
    for shot in shots:
        paths: list[str] = []
        predictions: list[float] = []
        for cluster in shot.get("clusters", []):
            image = cluster.get("collage") or cluster.get("keyframe")
            if image:  # both lists stay the same length: a face is listed with its picture
                paths.append(image)
                predictions.append(float(cluster["score"]))
        rows.append(
            {
                "shot_start": float(shot["start_s"]),
                "shot_end": float(shot["end_s"]),
                "shot_image": shot.get("gallery") or shot.get("thumbnail") or fallback,
                "prediction": _prediction(shot.get("score")),
                "face_image_paths": paths,
                "face_predictions": predictions,
            }
        )
    top = _top_shot(result)
    # The client shows the shot whose prediction equals the overall one.
    prediction = _prediction(top.get("score")) if top is not None else 0.0
    return {"prediction": prediction, "video_path": video_url, "results": rows}


def image_report(result: dict[str, Any]) -> dict[str, Any]:
    """The image service's report: one entry per face (per track in a video's top shot)."""
    width = int(result["source"]["width"])
    height = int(result["source"]["height"])
    top = _top_shot(result)
    info = []
    for cluster in (top or {}).get("clusters", []):
        face = max(cluster["faces"], key=lambda f: f["detection_confidence"])
        x1, y1, x2, y2 = face["box"]
        info.append(
            {
                "bbox": {
                    "top": _fraction(y1, height),
                    "left": _fraction(x1, width),
                    "bottom": _fraction(y2, height),
                    "right": _fraction(x2, width),
                },
                "prediction": float(cluster["score"]),
            }
        )
    return {"prediction": _prediction(result.get("score")), "info": info}


def _services(raw: str | None, route: MediaRoute) -> list[str]:
    if raw is None or not raw.strip():
        return list(DEFAULT_SERVICES[route])
    wanted = list(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [s for s in wanted if s not in VIDEO_SERVICES | IMAGE_SERVICES]
    if unknown or not wanted:
        known = ", ".join(sorted(VIDEO_SERVICES | IMAGE_SERVICES))
        raise ProblemError.of(
            "invalid-input", f"unknown service(s) {', '.join(unknown)}; this service offers {known}"
        )
    return wanted


def _guard(ctx: ApiContext, request: Request) -> None:
    """Refuse (403) addresses outside ``mever.allowed_networks`` and disallowed origins, and
    (429) an address over its rate."""
    settings = ctx.config.mever
    address = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ProblemError.of("forbidden", "the client address is unknown") from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not any(ip in net for net in settings.allowed_networks):
        raise ProblemError.of("forbidden", "this address may not use the MeVer-compatible API")
    origin = request.headers.get("origin")
    if origin and settings.allowed_origins and origin not in settings.allowed_origins:
        raise ProblemError.of("forbidden", f"origin {origin[:100]} is not allowed")
    decision = ctx.limiter.hit(f"mever:{ip}", settings.rate_per_min)
    if not decision.allowed:
        raise ProblemError.of(
            "rate-limited",
            f"over {decision.limit} requests per minute from this address",
            headers=decision.headers(),
        )


def _answer(
    settings: MeverSettings, request: Request, body: dict[str, Any], status: int = 200
) -> JSONResponse:
    """``body`` as JSON, never cached, with CORS headers for an allowed ``Origin``."""
    headers = {"Cache-Control": "no-store"}
    origin = request.headers.get("origin")
    if origin and origin in settings.allowed_origins:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    return JSONResponse(body, status_code=status, headers=headers)


def _mever_job(service: JobsService, job_id: str) -> Job:
    job = service.get(job_id)
    if "mever" not in job.options:  # /v1 jobs belong to key holders, not to this API
        raise ProblemError.of("not-found", f"no job with id {job_id[:80]}")
    return job


def _reports(job: Job, result: dict[str, Any], video_url: str) -> dict[str, Any]:
    """``{"<service>_report": ...}`` for every service the job was submitted for."""
    body: dict[str, Any] = {}
    fsfm = fsfm_members(result)
    for name in job.options["mever"]["services"]:
        if name == "faceswap_fsfm" and fsfm:
            # With an FSFM member in the ensemble, its report is that member's own.
            body[f"{name}_report"] = video_report(rescored(result, fsfm), video_url)
        elif name in VIDEO_SERVICES:
            body[f"{name}_report"] = video_report(result, video_url)
        else:
            body[f"{name}_report"] = image_report(result)
    return body


def mever_router(ctx: ApiContext, service: JobsService) -> APIRouter:
    """The compatibility routes, to be mounted at ``mever.base_path``."""
    settings = ctx.config.mever
    router = APIRouter(tags=["MeVer compatibility"])

    @router.post("/{route}/jobs", status_code=202)
    async def submit(
        request: Request, route: MediaRoute, url: str | None = None, services: str | None = None
    ) -> JSONResponse:
        """Submit by ``url`` query parameter or a multipart ``file``; answers ``{"id"}``."""
        await run_in_threadpool(_guard, ctx, request)
        wanted = _services(services, route)
        options = {"mever": {"route": route, "services": wanted}}
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            job, _ = await service.submit_upload(
                request, owner=None, force=False, options=options, api="mever", only_field=True
            )
        elif url:
            job, _ = await service.submit_url(
                url, owner=None, force=False, options=options, api="mever"
            )
        else:
            raise ProblemError.of("invalid-input", "give ?url=... or a multipart field 'file'")
        return _answer(settings, request, {"id": job.id, "status": mever_status(job.status)}, 202)

    @router.get("/{route}/jobs/{job_id}")
    def status(request: Request, route: MediaRoute, job_id: str) -> JSONResponse:
        _guard(ctx, request)
        job = _mever_job(service, job_id)
        return _answer(settings, request, {"id": job.id, "status": mever_status(job.status)})

    @router.get("/{route}/reports/{job_id}")
    def reports(request: Request, route: MediaRoute, job_id: str) -> JSONResponse:
        _guard(ctx, request)
        job = _mever_job(service, job_id)
        artefacts = f"{ctx.base_url(request)}{settings.base_path}artefacts/{job.id}/"
        result = service.resolved_result(job, lambda p: artefacts + p)
        video_url = artefacts + source_artefact(result["source"]["format"])
        return _answer(settings, request, _reports(job, result, video_url))

    @router.api_route("/artefacts/{job_id}/{path:path}", methods=["GET", "HEAD"])
    def artefact(request: Request, job_id: str, path: str) -> Response:
        """Pictures and the analysed medium, with ``Range`` support."""
        _guard(ctx, request)
        return service.artefact_response(request, _mever_job(service, job_id), path)

    return router
