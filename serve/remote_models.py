"""The pipeline's models reached through Serve deployment handles.

:class:`RemoteModels` implements :class:`pipeline.model_access.PipelineModels`, so the job
runner runs the very :class:`pipeline.analyze.Analyzer` that ``dfd analyze`` runs, with each model
in its own deployment (paper 3.3: every block is its own micro-service). The members are called
concurrently, each with its own centred square of the face crops (the crops are put in the object
store once and each member cuts its square on its replica: :class:`SharedCrops`), and their sigmoid
probabilities combined by the same rules as :meth:`pipeline.models.Ensemble.predict`
(:mod:`pipeline.models.ensemble`); only the grouping of faces into forward passes differs
(``@serve.batch`` mixes requests), which moves scores by float rounding only.

Calls block (``DeploymentResponse.result()``): use this from worker threads, never from an event
loop. Overload of a model deployment (its bounded queue is full) is waited out with backoff up
to ``retry_timeout_s`` instead of failing the job at the first refusal. A replica lost in the
middle of a call (its node died, its process crashed) is a failed *step*: the call is sent again
and Serve routes it to a live replica, or to the one it starts elsewhere, up to
``max_replica_losses`` times per call, so that an input that kills every replica it reaches
fails its job instead of the whole deployment. A call not answered within ``call_timeout_s``
(a replica that hangs) is cancelled and fails its job with a :class:`ModelError`, so that no
job waits forever on a model.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from pipeline.errors import ModelError
from pipeline.faces import Detection
from pipeline.models import EnsemblePrediction, MemberInfo
from pipeline.models.member import combine, context_margin, member_crops, untrained_warning
from serve.replicas import SharedCrops

__all__ = ["ModelsDescription", "RemoteModels", "SharedCrops", "untrained_warning"]

log = logging.getLogger(__name__)

#: The deployment cannot take the request now: wait and send it again.
_OVERLOADED = (BackPressureError, DeploymentUnavailableError)
#: The replica that had the request is gone (node or process died): send it again.
_REPLICA_LOST = (RayActorError, ReplicaUnavailableError, WorkerCrashedError, ObjectLostError)


@dataclass(frozen=True)
class ModelsDescription:
    """What the model deployments said about themselves when the runner connected."""

    face_detector_name: str
    segmentation_method: str
    segmentation_threshold: float
    has_embedder: bool
    members: tuple[MemberInfo, ...]
    ensemble: str = "custom"


class RemoteModels:
    """:class:`~pipeline.model_access.PipelineModels` over deployment handles (thread-safe)."""

    def __init__(
        self,
        detector: DeploymentHandle,
        embedder: DeploymentHandle,
        features: DeploymentHandle,
        members: Sequence[DeploymentHandle],
        description: ModelsDescription,
        *,
        retry_timeout_s: float = 120.0,
        max_replica_losses: int = 3,
        call_timeout_s: float = 300.0,
        share_member_crops: bool = True,
    ) -> None:
        if len(members) != len(description.members):
            raise ValueError("one member info per member handle is needed")
        self._detector = detector
        self._embedder = embedder
        self._features = features
        self._members = list(members)
        self.description = description
        self.face_detector_name = description.face_detector_name
        self.segmentation_method = description.segmentation_method
        self.segmentation_threshold = description.segmentation_threshold
        self.has_embedder = description.has_embedder
        self.member_names = tuple(i.name for i in description.members)
        self.crop_margin = context_margin(description.members)
        self.ensemble_name = description.ensemble
        self._retry_timeout_s = retry_timeout_s
        self._max_replica_losses = max_replica_losses
        self._call_timeout_s = call_timeout_s
        self._share_member_crops = share_member_crops

    @classmethod
    async def connect(
        cls,
        detector: DeploymentHandle,
        embedder: DeploymentHandle,
        features: DeploymentHandle,
        members: Sequence[DeploymentHandle],
        *,
        ensemble: str = "custom",
        retry_timeout_s: float = 120.0,
        call_timeout_s: float = 300.0,
        share_member_crops: bool = True,
    ) -> RemoteModels:
        """Ask every deployment what it runs (awaits; call from async code, e.g. a replica's
        ``async __init__``)."""
        det = await detector.describe.remote()
        emb = await embedder.describe.remote()
        feat = await features.describe.remote()
        infos = [await m.describe.remote() for m in members]
        description = ModelsDescription(
            face_detector_name=str(det["name"]),
            segmentation_method=str(feat["method"]),
            segmentation_threshold=float(feat["cut_threshold"]),
            has_embedder=bool(emb["available"]),
            members=tuple(i["info"] for i in infos),
            ensemble=ensemble,
        )
        return cls(
            detector, embedder, features, members, description,
            retry_timeout_s=retry_timeout_s, call_timeout_s=call_timeout_s,
            share_member_crops=share_member_crops,
        )  # fmt: skip

    # -- PipelineModels ----------------------------------------------------------------------

    def region_features(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not frames:
            return []
        return list(self._call(self._features.features.remote, list(frames)))

    def detect_faces(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not frames:
            return []
        return list(self._call(self._detector.detect.remote, list(frames)))

    def embed_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not self.has_embedder:
            raise ModelError("the face-embedding deployment has no weights loaded")
        if not crops:
            return np.zeros((0, 512), dtype=np.float32)
        return np.asarray(self._call(self._embedder.embed.remote, list(crops)))

    def score_faces(self, crops: Sequence[np.ndarray]) -> EnsemblePrediction:
        """All members at once (concurrent requests), probabilities combined (paper 3.1).

        ``crops`` are cut at :attr:`crop_margin`; each member gets its own centred square.
        """
        infos = self.description.members
        n, m = len(crops), len(self._members)
        member_probs = np.zeros((n, m), dtype=np.float64)
        if n:
            calls, args = self._member_calls(crops)
            # The requests run in parallel on the members' replicas.
            pending = [self._submit(c, a) for c, a in zip(calls, args, strict=True)]
            for j, response in enumerate(pending):
                probs = self._resolve(response, calls[j], args[j])
                member_probs[:, j] = np.asarray(probs, dtype=np.float64)
        prob = combine(member_probs, [i.weight for i in infos])
        return EnsemblePrediction(prob, member_probs, self.member_names)

    def _member_calls(
        self, crops: Sequence[np.ndarray]
    ) -> tuple[list[Callable[[Any], Any]], list[Any]]:
        """Each member's method and argument: one :class:`SharedCrops` for all (one put), or,
        with ``share_member_crops`` off, each member its own square of the crops (Ray serialises
        each request's argument on its own)."""
        if self._share_member_crops:
            shared = SharedCrops(ray.put(list(crops)), self.crop_margin)
            return [h.predict_shared.remote for h in self._members], [shared] * len(self._members)
        infos = self.description.members
        squares = [list(member_crops(crops, i.crop_margin, self.crop_margin)) for i in infos]
        return [h.predict.remote for h in self._members], squares

    def model_infos(self) -> list[MemberInfo]:
        return list(self.description.members)

    def warnings(self) -> list[str]:
        return untrained_warning(self.description.members)

    # -- calls with backoff ------------------------------------------------------------------

    def _call(self, method: Callable[[Any], Any], arg: Any) -> Any:
        """``method(arg).result()`` (``method`` a handle's ``.remote``), waiting out overload."""
        return self._resolve(self._submit(method, arg), method, arg)

    @staticmethod
    def _submit(method: Callable[[Any], Any], arg: Any) -> DeploymentResponse | None:
        try:
            response: DeploymentResponse = method(arg)
        except _OVERLOADED:
            return None
        return response

    def _answer(self, response: DeploymentResponse) -> Any:
        """The call's answer, or a :class:`ModelError` once ``call_timeout_s`` has passed (the
        call is cancelled: a hung replica must not hold the job forever)."""
        try:
            return response.result(timeout_s=self._call_timeout_s)
        except TimeoutError as exc:
            response.cancel()
            raise ModelError(
                f"a model deployment did not answer within {self._call_timeout_s:.0f} s "
                "(model_call_timeout_s); its replica may be stuck"
            ) from exc

    def _resolve(
        self, response: DeploymentResponse | None, method: Callable[[Any], Any], arg: Any
    ) -> Any:
        deadline = time.monotonic() + self._retry_timeout_s
        delay = 0.05
        losses = 0
        while True:
            try:
                if response is None:
                    response = method(arg)
                assert response is not None
                return self._answer(response)
            except _OVERLOADED as exc:
                if time.monotonic() + delay > deadline:
                    raise ModelError(
                        f"a model deployment stayed overloaded for {self._retry_timeout_s:.0f} s; "
                        "add replicas or lower the job concurrency"
                    ) from exc
                log.info(
                    "model deployment busy (%s); retrying in %.2f s", type(exc).__name__, delay
                )
            except _REPLICA_LOST as exc:
                losses += 1
                if losses > self._max_replica_losses or time.monotonic() + delay > deadline:
                    raise ModelError(
                        f"a model replica was lost {losses} times while answering this "
                        f"request (last: {type(exc).__name__}); its node or process died"
                    ) from exc
                log.warning(
                    "model replica lost (%s: %s); sending the request again",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
            response = None
