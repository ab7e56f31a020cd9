"""What every model replica shares, and the member deployment: none of it imports torch.

A Serve replica imports the module that defines its deployment class, and everything that
module imports. Members that run an exported file (ONNX Runtime, OpenVINO: the CPU default)
need no torch, so their deployment lives here, apart from :mod:`serve.deployments` (which
imports the whole pipeline): a member replica then holds its weights once, in the runtime,
without torch's own ~600 MB of resident memory (``dfd bench serve`` reports each replica's).
``tests/serve/test_replicas.py`` checks that importing this module and loading an exported
member leave torch out.

Besides the member: ``@serve.batch`` by items and its live knobs (:class:`BatchedModel`,
:class:`BatchSettings`), where a replica landed (:func:`replica_placement`), and the crops an
ensemble call puts in the object store once for all its members (:class:`SharedCrops`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from pipeline.models.manifest import resolve_model_dir
from pipeline.models.member import Member, MemberInfo, member_crops
from pipeline.models.settings import InferenceSettings

if TYPE_CHECKING:
    pass

__all__ = [
    "BatchSettings",
    "BatchedModel",
    "MemberDeployment",
    "MemberServer",
    "SharedCrops",
    "batch_items",
    "joined_answers",
    "replica_device",
    "replica_placement",
    "request_pieces",
]


class BatchSettings(BaseModel):
    """``@serve.batch`` knobs; they reach replicas as ``user_config`` (applied by
    ``reconfigure``). ``enabled: false`` calls the model once per request.

    Batches are counted in items (frames for the detector and the features, face crops for the
    embedder and the members), summed over the requests merged: a request larger than
    ``max_batch_size`` is split into pieces that join other requests' batches. On a GPU each
    batch is one forward pass, so size it to fill the GPU (hundreds of crops); on CPU the
    members still run ``inference.batch_size`` crops at a time.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)


@dataclass(frozen=True)
class SharedCrops:
    """The face crops of one ensemble call, put in the object store once for all the members.

    The reference travels inside this object, so Serve passes it on as a reference (it resolves
    only top-level references); each member replica reads the crops from its node's object store
    (zero-copy on the node that holds them) and cuts its own centred square
    (:func:`~pipeline.models.member.member_crops`). Without it every member call would
    serialise and store its own copy of the crops: five copies per call.
    """

    #: ``ray.ObjectRef`` of the list of crops.
    crops: Any
    #: The margin the crops were cut at (the widest member's).
    context_margin: float


# ---------------------------------------------------------------------------------------------
# The member's plain server (no Ray)


class MemberServer:
    """One ensemble member (paper 3.2): each request a list of face crops, each answer the
    ``(N_i,)`` float64 sigmoid probabilities. Crops of all requests go through the network
    together: in one forward pass on a GPU, ``settings.batch_size`` at a time on CPU (larger
    batches only cost memory there)."""

    def __init__(self, name: str, settings: InferenceSettings) -> None:
        directory = resolve_model_dir(settings.model_dir)
        spec = directory.load().member(name)
        self.settings = settings
        self.member = Member.load(spec, directory, settings)
        # The torch runner's device; an exported member runs on the CPU without torch.
        self.device = None if self.member.exported else settings.torch_device()
        self._lock = threading.Lock()

    @property
    def info(self) -> MemberInfo:
        return self.member.info

    def describe(self) -> dict[str, Any]:
        return {"info": self.member.info}

    def predict_many(self, requests: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        flat = [crop for crops in requests for crop in crops]
        probs = np.zeros(len(flat), dtype=np.float64)
        on_gpu = self.device is not None and self.device.type == "cuda"
        step = max(len(flat), 1) if on_gpu else self.settings.batch_size
        with self._lock:
            for start in range(0, len(flat), step):
                chunk = flat[start : start + step]
                probs[start : start + len(chunk)] = self.member.predict(chunk, self.device)
        sizes = [len(r) for r in requests]
        starts = np.cumsum([0, *sizes])
        return [probs[starts[i] : starts[i + 1]] for i in range(len(sizes))]


# ---------------------------------------------------------------------------------------------
# Serve wrappers


def replica_device(preference: str) -> str:
    """``cpu``/``cuda`` as asked; ``auto``: CUDA when Ray gave this replica a GPU and torch sees
    one (a replica without ``num_gpus`` must not grab a GPU it was not given)."""
    if preference != "auto":
        return preference
    if not ray.get_gpu_ids():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def replica_placement() -> dict[str, Any]:
    """Where this replica runs and what Ray reserved for it (GPU fractions included)."""
    runtime = ray.get_runtime_context()
    replica = serve.get_replica_context()
    return {
        "deployment": replica.deployment,
        "replica": replica.replica_tag,
        "node_id": runtime.get_node_id(),
        "resources": dict(runtime.get_assigned_resources()),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


def batch_items(requests: list[Any]) -> int:
    """A batch's size in items (frames or crops), not requests: ``@serve.batch``'s
    ``batch_size_fn``."""
    return sum(len(r) for r in requests)


def request_pieces(request: Any, step: int) -> list[Any]:
    """A request (a list of frames or crops) in pieces of at most ``step`` items."""
    return [request[i : i + step] for i in range(0, len(request), step)]


def joined_answers(parts: list[Any]) -> Any:
    """The answers to the pieces of one request, as the answer to the whole."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


class BatchedModel:
    """The Serve side of a model server: ``@serve.batch`` by items and its live knobs.

    Subclasses set ``self._run_many`` (the server's ``*_many`` method) in ``__init__``.
    """

    _run_many: Any
    _knobs: BatchSettings = BatchSettings()  # until Serve calls reconfigure

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        knobs = BatchSettings.model_validate(user_config or {})
        self._knobs = knobs
        batched: Any = self._batched  # @serve.batch adds the setters
        batched.set_max_batch_size(knobs.max_batch_size)
        batched.set_batch_wait_timeout_s(knobs.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, batch_size_fn=batch_items)
    async def _batched(self, requests: list[Any]) -> list[Any]:
        return await asyncio.to_thread(self._run_many, requests)

    async def _call(self, request: Any) -> Any:
        if not self._knobs.enabled:
            return (await asyncio.to_thread(self._run_many, [request]))[0]
        step = self._knobs.max_batch_size
        if len(request) <= step:
            return await self._batched(request)
        # Larger than a batch: in pieces, each joining (or forming) a batch of its own.
        pieces = request_pieces(request, step)
        return joined_answers(list(await asyncio.gather(*(self._batched(p) for p in pieces))))

    async def placement(self) -> dict[str, Any]:
        return replica_placement()

    async def batching(self) -> dict[str, Any]:
        """The batch knobs this replica applies now (``user_config``, changed live) and the
        replica's id."""
        return {"replica": serve.get_replica_context().replica_tag, **self._knobs.model_dump()}


@serve.deployment(name="Member")
class MemberDeployment(BatchedModel):
    """One ensemble member; deployed once per member under ``Member_<name>``."""

    def __init__(self, name: str, settings: InferenceSettings, device: str) -> None:
        if device != "auto" or settings.device == "auto":
            settings = settings.model_copy(update={"device": replica_device(device)})
        self.server = MemberServer(name, settings)
        self._run_many = self.server.predict_many

    async def describe(self) -> dict[str, Any]:
        return self.server.describe()

    async def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        return await self._call(crops)

    async def predict_shared(self, shared: SharedCrops) -> np.ndarray:
        """:meth:`predict` on crops the caller put in the object store once for every member:
        read them (from this node's store) and cut this member's centred square."""
        crops = await shared.crops
        mine = member_crops(crops, self.server.info.crop_margin, shared.context_margin)
        return await self._call(list(mine))
