"""The job runner: claims queued jobs, runs the analysis, stores progress, results, artefacts.

Paper 3.3 dispatches jobs with RQ; here a :class:`JobWorker` (plain Python: threads and the job
store, no Ray) does it inside the ``JobRunner`` deployment. Everything a job is lives in the
store, so nothing is lost with a process:

- a worker *claims* the oldest queued job (atomic in both stores: no job runs twice);
- while it runs, its progress is written as it goes and a heartbeat touches it every
  ``heartbeat_s`` as long as its progress moved in the last ``stall_after_s``; a job untouched
  for ``stale_after_s`` belongs to a dead or stuck worker, and every worker recovers such jobs
  on start and every ``recovery_interval_s`` (back to the queue while attempts remain, else
  failed with the reason); a worker holding a stuck job, a dead thread or no store reports
  itself unhealthy (:meth:`JobWorker.health`) so that Serve replaces it;
- cancelling or deleting a job is seen at its next progress report, which stops the analysis;
- a graceful stop puts the worker's running jobs back in the queue at once.

Artefacts of job ``<id>`` are stored under ``jobs/<id>/``: the galleries and crops the analysis
writes (same relative paths as ``dfd analyze``), and the analysed medium as
``source.<format>`` (the upload itself, or the downloaded file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analyze import AnalysisSettings, Analyzer
from pipeline.download import DownloadSettings, fetch
from pipeline.errors import DfdError
from pipeline.models import MemberInfo
from pipeline.models.member import models_digest
from pipeline.result import Result
from pipeline.version import __version__
from serve.config import JobSettings
from serve.jobstore import (
    CacheKey,
    Job,
    JobConflictError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Progress,
    RecoveryReport,
)
from serve.metrics import RunnerMetrics
from serve.problems import GENERIC_INTERNAL_DETAIL, make_problem, problem_from_exception
from serve.storage import ArtefactStorage, LocalStorage

__all__ = [
    "MEDIA_TYPES",
    "JobWorker",
    "PrefixedSink",
    "cache_namespace",
    "job_prefix",
    "source_artefact",
]

log = logging.getLogger(__name__)

#: Content types of the media formats :func:`pipeline.media.sniff_format` names.
MEDIA_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "3gp": "video/3gpp",
    "matroska": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
    "mpegts": "video/mp2t",
    "mpegps": "video/mpeg",
    "flv": "video/x-flv",
    "asf": "video/x-ms-asf",
    "ogg": "video/ogg",
}


def job_prefix(job_id: str) -> str:
    """Storage prefix of a job's artefacts."""
    return f"jobs/{job_id}/"


def source_artefact(media_format: str) -> str:
    """Name (relative to the job's prefix) of the stored medium."""
    return f"source.{media_format}"


def cache_namespace(settings: AnalysisSettings, infos: Sequence[MemberInfo]) -> str:
    """Cache entries are valid for one service version *and* one set of models and analysis
    settings: ``<version>+<digest>``. Paper 5.3 bumps the version when either changes; the
    digest also covers a deployment that swaps weights without bumping it."""
    settings_part = settings.model_dump(mode="json", exclude={"download", "shot_workers"})
    raw = json.dumps({"settings": settings_part, "models": models_digest(infos)}, sort_keys=True)
    return f"{__version__}+{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


class PrefixedSink:
    """An :class:`~pipeline.artefacts.ArtefactSink` writing ``key`` as ``prefix + key``, so the
    result keeps the same relative paths as an in-process analysis."""

    def __init__(self, storage: ArtefactStorage, prefix: str) -> None:
        self.storage = storage
        self.prefix = prefix

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.storage.put_bytes(self.prefix + key, data, content_type)


class _Stop(Exception):
    """The job must stop: ``cancelled`` (by a user) or the worker is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Active:
    job: Job
    progress: Progress = field(default_factory=lambda: Progress(stage="starting"))
    last_write: float = 0.0
    #: When ``progress`` last changed (monotonic seconds).
    last_progress: float = field(default_factory=time.monotonic)
    stopping: threading.Event = field(default_factory=threading.Event)

    def stalled_s(self, now: float) -> float:
        return now - self.last_progress


class JobWorker:
    """Runs jobs from ``store`` with ``analyzer``, ``settings.concurrency`` at a time.

    ``start()`` recovers stale jobs, then a dispatcher thread claims work whenever a slot is
    free (woken by :meth:`wake`, or every ``poll_interval_s``) and a housekeeping thread beats
    the running jobs' hearts and recovers stale ones. ``process(job)`` runs one claimed job
    synchronously (used by the dispatcher; handy in tests).
    """

    def __init__(
        self,
        store: JobStore,
        storage: ArtefactStorage,
        analyzer: Analyzer,
        settings: JobSettings | None = None,
        *,
        cache_namespace: str,
        download: DownloadSettings | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.analyzer = analyzer
        self.settings = settings or JobSettings()
        self.namespace = cache_namespace
        self.download = download or analyzer.settings.download
        self.worker_id = secrets.token_hex(4)
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._counts = {"claimed": 0, "done": 0, "failed": 0, "stopped": 0, "recovered": 0}
        self._handed_back: set[str] = set()
        #: Through Ray Serve's metrics API inside a replica; recorded nowhere elsewhere (the
        #: embedded ``/metrics`` reads :meth:`stats` and the store instead).
        self.metrics = metrics or RunnerMetrics()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RecoveryReport:
        """Recover stale jobs, then start claiming work in the background."""
        report = self.recover()
        self._executor = ThreadPoolExecutor(
            self.settings.concurrency, thread_name_prefix=f"dfd-job-{self.worker_id}"
        )
        for target, name in ((self._dispatch_loop, "dispatch"), (self._housekeeping, "house")):
            thread = threading.Thread(target=target, name=f"dfd-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return report

    def wake(self) -> None:
        """New work may be queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, grace_s: float | None = None) -> list[str]:
        """Stop claiming; ask running jobs to stop; after ``grace_s`` put those still running
        back in the queue. Returns the ids put back."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stop.set()
        self._wake.set()
        with self._lock:
            active = list(self._active.values())
        for a in active:
            a.stopping.set()
        for thread in self._threads:
            thread.join(timeout=max(grace, 0.1))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._active:
                    break
            time.sleep(0.05)
        with self._lock:
            leftover = [a.job.id for a in self._active.values()]
        for job_id in leftover:
            self._hand_back(job_id)
        with self._lock:
            requeued = sorted(self._handed_back)
        if requeued:
            log.warning("worker %s stopped; requeued %s", self.worker_id, requeued)
        return requeued

    def _hand_back(self, job_id: str) -> None:
        """Put a running job of this worker back in the queue (it is stopping)."""
        with contextlib.suppress(JobConflictError, JobNotFoundError):
            self.store.update(
                job_id,
                status=JobStatus.QUEUED,
                progress=Progress(stage="queued"),
                expect={JobStatus.RUNNING},
            )
            with self._lock:
                self._handed_back.add(job_id)

    def recover(self) -> RecoveryReport:
        """Recover jobs left running by a dead worker (untouched for ``stale_after_s``)."""
        s = self.settings
        report = self.store.requeue_running(
            f"the job runner stopped during the analysis {s.max_attempts} time(s)",
            policy=s.recovery_policy,
            max_attempts=s.max_attempts,
            stale_after_s=s.stale_after_s,
        )
        recovered = len(report.requeued) + len(report.failed)
        with self._lock:
            self._counts["recovered"] += recovered
        self.metrics["dfd_jobs_recovered"].inc(recovered)
        if report.requeued:
            self.wake()
        return report

    def health(self) -> None:
        """Raise when this worker cannot do its work: a thread died, the store does not answer,
        or a job made no progress for ``stall_after_s`` (Serve's ``check_health``)."""
        problems = []
        if self._threads and not self._stop.is_set():
            dead = [t.name for t in self._threads if not t.is_alive()]
            if dead:
                problems.append(f"thread(s) {', '.join(dead)} died")
        try:
            self.store.count("running")
        except Exception as exc:
            problems.append(f"the job store does not answer ({type(exc).__name__}: {exc})")
        now = time.monotonic()
        with self._lock:
            stuck = [
                f"{a.job.id} ({a.progress.stage}, {a.stalled_s(now):.0f} s)"
                for a in self._active.values()
                if a.stalled_s(now) > self.settings.stall_after_s
            ]
        if stuck:
            problems.append(f"no progress beyond stall_after_s in job(s) {', '.join(stuck)}")
        if problems:
            raise RuntimeError(f"job runner {self.worker_id} unhealthy: " + "; ".join(problems))

    def stats(self) -> dict[str, Any]:
        """Counters since start and the jobs running now."""
        with self._lock:
            return {
                "worker": self.worker_id,
                **self._counts,
                "running": sorted(self._active),
                "concurrency": self.settings.concurrency,
            }

    # -- loops -------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        assert self._executor is not None
        futures: set[Future[None]] = set()
        while not self._stop.is_set():
            futures = {f for f in futures if not f.done()}
            job = None
            if len(futures) < self.settings.concurrency:
                try:
                    job = self.store.claim_next()
                except Exception:  # a store outage must not kill the loop
                    log.exception("cannot claim jobs; retrying")
            if job is not None:
                with self._lock:
                    self._counts["claimed"] += 1
                    self._active[job.id] = _Active(job)
                futures.add(self._executor.submit(self.process, job))
                continue
            self._wake.wait(self.settings.poll_interval_s)
            self._wake.clear()

    def _housekeeping(self) -> None:
        s = self.settings
        next_recovery = time.monotonic() + s.recovery_interval_s
        while not self._stop.wait(min(s.heartbeat_s, s.recovery_interval_s)):
            with self._lock:
                active = list(self._active.values())
            now = time.monotonic()
            for a in active:
                if a.stalled_s(now) > s.stall_after_s:
                    # Stuck (a call that never returns): no heartbeat, so that recovery hands
                    # the job to a runner again once it is stale.
                    log.warning(
                        "job %s: no progress for %.0f s in %s; heartbeat stopped",
                        a.job.id, a.stalled_s(now), a.progress.stage,
                    )  # fmt: skip
                    continue
                # Rewriting the current progress refreshes updated_at: the job's heartbeat.
                with contextlib.suppress(JobConflictError, JobNotFoundError):
                    self.store.update(a.job.id, progress=a.progress, expect={JobStatus.RUNNING})
            if time.monotonic() >= next_recovery:
                next_recovery = time.monotonic() + s.recovery_interval_s
                try:
                    self.recover()
                    for status in JobStatus:
                        n = self.store.count(status)
                        self.metrics["dfd_jobs_in_store"].set(n, status=str(status))
                except Exception:
                    log.exception("recovery of stale jobs failed; retrying later")

    # -- one job -----------------------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Run a claimed (``running``) job to a final state; never raises."""
        with self._lock:
            active = self._active.setdefault(job.id, _Active(job))
        outcome = "failed"
        try:
            self._run(active)
            outcome = "done"
        except _Stop as stop:
            outcome = "stopped"
            if stop.reason == "cancelled":
                self._discard_artefacts(job)
            else:  # the worker is stopping: the job goes back to the queue now
                self._hand_back(job.id)
        except Exception as exc:
            self._fail(job, exc)
        finally:
            with self._lock:
                self._active.pop(job.id, None)
                self._counts[outcome] += 1
            self.metrics["dfd_jobs_finished"].inc(outcome=outcome)

    def _run(self, active: _Active) -> None:
        job = active.job
        prefix = job_prefix(job.id)
        sink = PrefixedSink(self.storage, prefix)

        def progress(stage: str, done: int, total: int) -> None:
            if active.stopping.is_set():
                raise _Stop("shutdown")
            new = Progress(stage=stage, done=max(done, 0), total=max(total, 0))
            now = time.monotonic()
            changed_stage = new.stage != active.progress.stage
            if new != active.progress:
                active.last_progress = now
            active.progress = new
            if changed_stage or now - active.last_write >= self.settings.progress_interval_s:
                active.last_write = now
                try:
                    self.store.update(job.id, progress=new, expect={JobStatus.RUNNING})
                except (JobConflictError, JobNotFoundError) as exc:
                    raise _Stop("cancelled") from exc

        with self._local_source(job, progress) as (path, url, download_s):
            result = self.analyzer.analyze_file(path, sink, url=url, progress=progress)
            if download_s is not None:
                result.timings = {"download": round(download_s, 4), **result.timings}
            upload_name = job.options.get("filename")
            if url is None:
                # Never expose the server's file system: an upload is named as the user sent it.
                result.source = result.source.model_copy(update={"path": upload_name})
            if self.settings.keep_source and "upload" not in job.options:
                name = source_artefact(result.source.format)
                self.storage.put_file(
                    prefix + name,
                    path,
                    MEDIA_TYPES.get(result.source.format, "application/octet-stream"),
                )
        self._finish(job, result)

    @contextlib.contextmanager
    def _local_source(
        self, job: Job, progress: Any
    ) -> Iterator[tuple[Path, str | None, float | None]]:
        """The medium as a local file: ``(path, url or None, download seconds or None)``."""
        upload = job.options.get("upload")
        with tempfile.TemporaryDirectory(prefix="dfd-job-") as tmp:
            if upload is not None:
                local = (
                    self.storage.local_path(upload)
                    if isinstance(self.storage, LocalStorage)
                    else None
                )
                if local is None:
                    local = Path(tmp) / "upload.bin"
                    with self.storage.open(upload) as src, open(local, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                yield local, None, None
                return
            progress("downloading", 0, 0)
            t0 = time.perf_counter()
            downloaded = fetch(job.source, Path(tmp), self.download)
            yield downloaded.path, job.source, time.perf_counter() - t0

    def _finish(self, job: Job, result: Result) -> None:
        try:
            self.store.put_result(job.id, result.model_dump_json())
            self.store.update(
                job.id,
                status=JobStatus.DONE,
                progress=Progress(stage="done", done=1, total=1),
                result_key=job.id,
                expect={JobStatus.RUNNING},
            )
        except (JobConflictError, JobNotFoundError) as exc:
            raise _Stop("cancelled") from exc
        for stage, seconds in result.timings.items():
            self.metrics["dfd_stage_seconds"].observe(seconds, stage=stage)
        self.metrics["dfd_faces_analysed"].inc(result.faces_total)
        ttl = self.settings.cache_ttl_s
        keys = {job.source_key, f"sha256:{result.source.sha256}"}
        for key in keys:
            self.store.cache_put(CacheKey(self.namespace, key), job.id, ttl_s=ttl)
        log.info("job %s done: score %s", job.id, result.score)

    def _fail(self, job: Job, exc: BaseException) -> None:
        # Ray wraps errors raised in a model replica; the user's error is its cause.
        cause = getattr(exc, "cause", None)
        err = cause if isinstance(cause, DfdError) else exc
        problem = problem_from_exception(err, instance=f"/v1/jobs/{job.id}")
        if problem.kind == "internal":
            error_id = secrets.token_hex(8)
            log.error("job %s failed (error %s)", job.id, error_id, exc_info=exc)
            problem = make_problem(
                "internal",
                GENERIC_INTERNAL_DETAIL,
                instance=f"/v1/jobs/{job.id}",
                error_id=error_id,
            )
        else:
            log.info("job %s failed: %s", job.id, problem.detail)
        try:
            self.store.update(
                job.id, status=JobStatus.FAILED, error=problem, expect={JobStatus.RUNNING}
            )
        except (JobConflictError, JobNotFoundError):
            return
        self._discard_artefacts(job)

    def _discard_artefacts(self, job: Job) -> None:
        try:
            self.storage.delete_prefix(job_prefix(job.id))
        except Exception:
            log.exception("cannot delete the artefacts of job %s", job.id)
