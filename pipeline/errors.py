"""Typed errors of the pipeline.

Every failure a user can cause or act on is a :class:`DfdError` subclass with a stable ``kind``
(used as the problem+json ``type`` suffix over HTTP and to pick the CLI exit code) and a one-line
message that says what went wrong and what to do. Internal invariants use ``assert``.
"""

from __future__ import annotations


class DfdError(Exception):
    """Base class. ``kind`` is stable across releases; ``title`` is a short human summary."""

    kind: str = "internal"
    title: str = "Internal error"
    #: CLI exit code family: 2 bad input, 3 download failure, 4 model/config problem, 1 internal.
    exit_code: int = 1

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadInputError(DfdError):
    kind = "invalid-input"
    title = "Invalid input"
    exit_code = 2


class InvalidUrlError(BadInputError):
    kind = "invalid-url"
    title = "Invalid URL"


class MissingFileError(BadInputError):
    kind = "not-found-input"
    title = "Input file not found"


class EmptyMediaError(BadInputError):
    kind = "empty-media"
    title = "Empty media"


class UnsupportedMediaError(BadInputError):
    kind = "unsupported-media"
    title = "Unsupported media"


class CorruptMediaError(BadInputError):
    kind = "corrupt-media"
    title = "Corrupt media"


class TooLargeError(BadInputError):
    kind = "too-large"
    title = "Media too large"


class DownloadError(DfdError):
    kind = "download-failed"
    title = "Download failed"
    exit_code = 3


class ForbiddenAddressError(DownloadError):
    kind = "forbidden-address"
    title = "Address not allowed"


class DownloadTimeoutError(DownloadError):
    kind = "download-timeout"
    title = "Download timed out"


class ModelError(DfdError):
    kind = "model-error"
    title = "Model error"
    exit_code = 4


class CheckpointError(ModelError):
    kind = "checkpoint-error"
    title = "Checkpoint error"


class UntrainedWeightsError(ModelError):
    kind = "untrained-weights"
    title = "Trained weights required"


class ConfigError(DfdError):
    kind = "config-error"
    title = "Configuration error"
    exit_code = 4


class RunFailedError(DfdError):
    """A run over a dataset lost more of its rows to dead workers than it allows (the lost rows
    are written as error rows; the rest of the run stands)."""

    kind = "run-failed"
    title = "Run failed"


class DatasetLayoutError(BadInputError):
    """A dataset folder does not have the official layout its reader expects."""

    kind = "dataset-layout"
    title = "Unexpected dataset layout"


class UndefinedMetricError(BadInputError):
    """A metric cannot be computed on these labels (e.g. AUC with only one class present)."""

    kind = "undefined-metric"
    title = "Metric undefined"
