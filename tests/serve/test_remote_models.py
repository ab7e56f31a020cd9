""":class:`serve.remote_models.RemoteModels`' retry rules, without Ray: a scripted stand-in for a
deployment handle answers each call with the next outcome of its script. (The real thing, a node
killed under a running job, is ``tests/cluster``'s last test.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from pipeline.errors import ModelError
from serve.remote_models import ModelsDescription, RemoteModels

#: A script item: the replica never answers.
HANG = object()


class _Answer:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cancelled = False

    def result(self, timeout_s: float | None = None) -> Any:
        if self.outcome is HANG:
            time.sleep(timeout_s or 0.0)
            raise TimeoutError
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, script: Iterator[Any]) -> None:
        self.script = script
        self.calls = 0

    def remote(self, arg: Any) -> _Answer:
        self.calls += 1
        self.last = _Answer(next(self.script))
        return self.last


class ScriptedHandle:
    """``handle.detect.remote(x).result()`` returns or raises the script's next item."""

    def __init__(self, *outcomes: Any) -> None:
        self.detect = _Method(iter(outcomes))


def remote(
    detector: ScriptedHandle, max_losses: int = 3, call_timeout_s: float = 30
) -> RemoteModels:
    description = ModelsDescription("mtcnn", "histogram", 0.5, False, ())
    return RemoteModels(
        detector,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        [],
        description,
        retry_timeout_s=30,
        max_replica_losses=max_losses,
        call_timeout_s=call_timeout_s,
    )


FRAME = np.zeros((8, 8, 3), dtype=np.uint8)


def test_a_lost_replica_is_a_failed_step_sent_again() -> None:
    busy = BackPressureError(num_queued_requests=1, max_queued_requests=1)
    handle = ScriptedHandle(ActorDiedError(), busy, [[]])
    assert remote(handle).detect_faces([FRAME]) == [[]]
    assert handle.detect.calls == 3


def test_an_input_that_keeps_killing_replicas_fails_its_job() -> None:
    handle = ScriptedHandle(*[ActorDiedError()] * 5)
    with pytest.raises(ModelError, match="lost 3 times"):
        remote(handle, max_losses=2).detect_faces([FRAME])
    assert handle.detect.calls == 3


def test_model_errors_are_not_retried() -> None:
    handle = ScriptedHandle(ValueError("bad frame"), [[]])
    with pytest.raises(ValueError, match="bad frame"):
        remote(handle).detect_faces([FRAME])
    assert handle.detect.calls == 1


def test_a_replica_that_never_answers_fails_the_call_after_the_timeout() -> None:
    handle = ScriptedHandle(HANG, [[]])
    with pytest.raises(ModelError, match="did not answer within 0 s"):
        remote(handle, call_timeout_s=0.2).detect_faces([FRAME])
    assert handle.detect.calls == 1 and handle.detect.last.cancelled
