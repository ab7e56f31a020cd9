"""The attack run folder: the format ``batch.attack`` writes and the robustness report reads.

One owner for the layout, the attack's settings (what ``attack.json`` records) and the reading
rules, so the report never needs the code that ran the attack::

    RUN/attack.json              dataset, attack settings, analysis settings, models; created_at
    RUN/parts/part-*.parquet     result rows as they stream in (newest row per video wins)
    RUN/scores.parquet           one row per video, sorted by video_id (written at the end)
    RUN/examples/<slug>-*.png    clean, perturbation and attacked crops of the example faces

Every file is written atomically (temporary name, then rename), so a run that stops loses at most
the rows not yet flushed, and a rerun into the same folder resumes it. :class:`AttackFolder` is
the evaluation run folder's implementation (:class:`evaluation.runs.PartsFolder`) on this layout.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluation.runs import PartsFolder, finished_ids_of, write_bytes, write_table
from pipeline.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    import pandas as pd

NormName = Literal["inf", "1", "2"]
BlackBoxName = Literal["hopskipjump", "square"]
DefenceName = Literal["jpeg", "smoothing", "squeeze"]


CONFIG_FILE = "attack.json"
PARTS_DIR = "parts"
SCORES_FILE = "scores.parquet"
EXAMPLES_DIR = "examples"
#: Columns of an example row holding PNG bytes; :meth:`AttackFolder.write_example` writes them
#: as files.
PNG_COLUMNS = ("example_clean_png", "example_perturbation_png", "example_attacked_png")


# ----------------------------------------------------------------------------------------------
# Settings


class AttackSettings(BaseModel):
    """What is done to each face (paper 4.1.3: PGD, eps 0.2, max_iter 5).

    ``eps`` and ``eps_step`` are in [0, 1] pixel units of the ``(3, S, S)`` crop, measured in the
    chosen norm over the whole crop. ``eps_step`` defaults to ART's 0.1 (the paper names only
    ``eps`` and ``max_iterations``).
    """

    model_config = ConfigDict(extra="forbid")

    norm: NormName = "inf"
    eps: float = Field(0.2, gt=0.0)
    eps_step: float = Field(0.1, gt=0.0)
    max_iter: int = Field(5, ge=1)
    #: ART's random restarts inside the eps ball (0: start from the clean crop, as ART's default).
    num_random_init: int = Field(0, ge=0)
    #: Faces per ART batch. The members' activations for the backward pass are the attack's
    #: memory (recomputed member by member: `dfd bench attack --presets paper` peaked at 4.9 GB
    #: on CPU with batches of 2), hence small.
    batch_size: int = Field(2, ge=1)
    #: Attack resolution; default: the largest member input size.
    input_size: int | None = Field(None, ge=16, le=1024)
    #: Craft on this member alone, score with the whole ensemble.
    transfer_from: str | None = None
    black_box: BlackBoxName | None = None
    #: Per-face query budget of the black-box attack: a hard cap for Square (whose ART version
    #: asks three times per iteration); HopSkipJump's iterations and gradient estimates are sized
    #: to about this many. Either way the count each face needed is recorded.
    max_queries: int = Field(1000, ge=10)
    #: The per-key rate limit the black-box query counts are set against (requests per minute).
    rate_per_min: int = Field(60, ge=1)
    defence: DefenceName | None = None
    jpeg_quality: int = Field(50, ge=1, le=95)
    smoothing_window: int = Field(3, ge=2)
    squeeze_bits: int = Field(4, ge=1, le=8)
    #: Faces with probability >= threshold count as "fake" for face-level success rates.
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: Seed of numpy's global generator before random parts of ART (random init, Square, HSJ).
    seed: int = 0

    @model_validator(mode="after")
    def _compatible(self) -> AttackSettings:
        if self.black_box is not None and self.transfer_from is not None:
            raise ValueError("a black-box attack has no surrogate member: drop transfer_from")
        if self.black_box == "hopskipjump" and self.norm == "1":
            raise ValueError("ART's HopSkipJump supports norm 2 or inf, not 1")
        return self

    def art_norm(self) -> float:
        return math.inf if self.norm == "inf" else float(self.norm)

    @property
    def kind(self) -> str:
        """``pgd``, ``transfer`` or the black-box attack's name."""
        if self.black_box is not None:
            return self.black_box
        return "transfer" if self.transfer_from else "pgd"

    def describe(self) -> str:
        what = self.black_box or "PGD"
        text = f"{what} norm-{self.norm} eps {self.eps:g}"
        if self.black_box is None:
            text += f" step {self.eps_step:g} x{self.max_iter}"
        else:
            text += f", <= {self.max_queries} queries/face"
        if self.transfer_from:
            text += f", crafted on {self.transfer_from}"
        if self.defence:
            text += f", defence {self.defence}"
        return text


# ----------------------------------------------------------------------------------------------
# Files


class AttackFolder(PartsFolder):
    """An attack run folder on disk: ``attack.json``, ``parts/``, ``scores.parquet`` and
    ``examples/``.

    Rows are plain dicts (:meth:`batch.attack_video.VideoAttacker.columns`: per-member columns
    and many nullable fields); a part's table takes the types of its values, and parts whose
    column is all None in one and typed in another (or int in one, float in another) still read
    as one table.
    """

    INFO_FILE = CONFIG_FILE
    WHAT = "an attack run folder"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.parts_dir = self.root / PARTS_DIR
        self.examples_dir = self.root / EXAMPLES_DIR
        self.scores_file = self.root / SCORES_FILE

    def clean(self) -> None:
        """Remove the temporary files of a session that stopped mid-write."""
        self.remove_temporaries(self.root, self.parts_dir, self.examples_dir)

    def write_example(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` without its PNG columns (:data:`PNG_COLUMNS`), which go to
        ``examples/<slug>-{clean,perturbation,attacked}.png``; its ``example`` column is
        ``"examples/<slug>"``, or None for a row without an example."""
        record = dict(record)
        pngs = {c: record.pop(c, None) for c in PNG_COLUMNS}
        record["example"] = None
        if pngs["example_clean_png"] is not None:
            name = slug(str(record["video_id"]))
            for column, data in pngs.items():
                suffix = column.removeprefix("example_").removesuffix("_png")
                write_bytes(self.examples_dir / f"{name}-{suffix}.png", data)
            record["example"] = f"{EXAMPLES_DIR}/{name}"
        return record

    def write_part(self, records: Sequence[dict[str, Any]]) -> str:
        """Write ``records`` (rows without PNG bytes: :meth:`write_example`) as one part,
        atomically; returns its name."""
        return self.write_table_part(self.parts_dir, rows_table(records))

    def rows(self) -> pa.Table | None:
        """One row per video (the newest part wins: retries replace), sorted by ``video_id``;
        None when nothing is written yet."""
        table, _ = self.newest_table(self.parts_dir, promote="permissive")
        return None if table is None else table.sort_by("video_id")

    def finished_ids(self, *, retry_errors: bool = False) -> set[str]:
        """Videos a new session skips: every written row, or only the error-free ones."""
        return finished_ids_of(self.rows(), retry_errors=retry_errors)

    def scores(self) -> pd.DataFrame:
        """:meth:`rows` as a pandas frame (empty, without columns, before the first part)."""
        import pandas as pd

        table = self.rows()
        return pd.DataFrame() if table is None else table.to_pandas()

    def consolidate(self) -> Path:
        """Write ``scores.parquet`` (atomically): one row per video, sorted by ``video_id``."""
        table = self.rows()
        write_table(pa.table({}) if table is None else table, self.scores_file)
        return self.scores_file


def rows_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """One table of dict rows: every key any row has (in first-seen order; missing -> None), each
    column typed by its values (all None -> the null type)."""
    names = list(dict.fromkeys(k for r in records for k in r))
    return pa.Table.from_pylist([{n: r.get(n) for n in names} for r in records])


def check_or_write_config(out: Path, config: dict[str, Any]) -> None:
    """A run folder holds one attack: a rerun must ask for the same one to resume it."""
    folder = AttackFolder(out)
    if folder.exists():
        old = folder.info()
        fixed = ("dataset", "attack", "analysis", "models")
        changed = [k for k in fixed if old.get(k) != config.get(k)]
        if changed:
            raise ConfigError(
                f"{out} holds a run with different {', '.join(changed)}; resume it with the same "
                "options or choose another --out"
            )
        return
    folder.write_info({**config, "created_at": datetime.now(UTC).isoformat()})


def read_config(out: Path) -> dict[str, Any]:
    """The run's ``attack.json``.

    Raises:
        MissingFileError: ``out`` is not an attack run folder.
    """
    folder = AttackFolder(out)
    if not folder.exists():
        raise MissingFileError(f"{folder.info_file} not found: {out} is not {folder.WHAT}")
    return folder.info()


def read_scores(out: Path) -> pd.DataFrame:
    """The run's rows as one pandas frame, from the part files (so also mid-run): the newest row
    per ``video_id`` (retries win), sorted by ``video_id``."""
    return AttackFolder(out).scores()


def slug(video_id: str) -> str:
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', video_id)[-80:]}-{digest}"
