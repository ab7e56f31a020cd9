"""The model directory: a ``manifest.json`` listing each member's spec, plus checkpoint files.

Layout::

    <model dir>/manifest.json        {"format_version": 1, "members": [...], ...}
    <model dir>/<member checkpoint>  .pt or .safetensors, named by the member's ``checkpoint``
    <model dir>/.cache/              exported ONNX files, keyed by weights, and OpenVINO's
                                     compiled blobs (.cache/openvino); safe to delete

The default location is ``$DFD_MODEL_DIR``, else ``$DFD_HOME/models``, else the user's data
directory (``platformdirs``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.models.checkpoint import file_sha256, read_state_dict
from pipeline.models.spec import MemberSpec, paper_members, tiny_members

MANIFEST_NAME = "manifest.json"
Preset = Literal["paper", "tiny"]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    ensemble_version: str = "0.0.0"
    members: list[MemberSpec]

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if not names:
            raise ValueError("a manifest needs at least one member")
        return self

    def member(self, name: str) -> MemberSpec:
        for spec in self.members:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"no member named {name!r}; the manifest has {[m.name for m in self.members]}"
        )


def dfd_home() -> Path:
    """Root of the service's local state (models, jobs, artefacts) for the embedded default."""
    env = os.environ.get("DFD_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("dfd", appauthor=False))


def default_model_dir() -> Path:
    env = os.environ.get("DFD_MODEL_DIR")
    return Path(env) if env else dfd_home() / "models"


class ModelDirectory:
    """A model directory on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def load(self) -> Manifest:
        if not self.manifest_path.is_file():
            raise ConfigError(
                f"no model manifest at {self.manifest_path}; create one with `dfd models init`"
            )
        try:
            return Manifest.model_validate_json(self.manifest_path.read_text())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"invalid manifest {self.manifest_path}: {where}: {first['msg']}"
            ) from exc

    def save(self, manifest: Manifest) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        tmp.replace(self.manifest_path)

    def checkpoint_path(self, spec: MemberSpec) -> Path | None:
        return None if spec.checkpoint is None else self.root / spec.checkpoint

    def init(
        self, preset: Preset = "paper", input_size: int | None = None, force: bool = False
    ) -> Manifest:
        """Write a manifest for ``preset`` with no checkpoints (members start untrained)."""
        if self.exists() and not force:
            raise ConfigError(f"{self.manifest_path} already exists; pass force to overwrite it")
        members = (
            paper_members(input_size or 300)
            if preset == "paper"
            else tiny_members(input_size or 64)
        )
        manifest = Manifest(members=members)
        self.save(manifest)
        return manifest

    def import_checkpoint(
        self, name: str, source: Path, *, version: str, trained_on: str, licence: str | None = None
    ) -> MemberSpec:
        """Copy a trained checkpoint in and record it, with its sha256, in the manifest.

        The file is loaded into the member's network first, so a checkpoint that does not fit is
        refused before the manifest changes.
        """
        from pipeline.models.checkpoint import load_checkpoint
        from pipeline.models.networks import build_network

        manifest = self.load()
        spec = manifest.member(name)
        read_state_dict(source)  # readable at all?
        load_checkpoint(build_network(spec), source, expected_sha256=None)
        dest = self.root / f"{name}{source.suffix}"
        if source.resolve() != dest.resolve():
            shutil.copyfile(source, dest)
        update = {
            "checkpoint": dest.name,
            "sha256": file_sha256(dest),
            "version": version,
            "trained_on": trained_on,
        }
        if licence is not None:
            update["licence"] = licence
        new_spec = spec.model_copy(update=update)
        manifest.members = [new_spec if m.name == name else m for m in manifest.members]
        self.save(manifest)
        return new_spec


def resolve_model_dir(path: Path | None, *, create_default: bool = True) -> ModelDirectory:
    """The model directory at ``path``, or the default one, created with the paper preset if absent.

    Only the default location is created on demand, so a typo in an explicit path is an error
    rather than a silently empty directory.
    """
    if path is not None:
        return ModelDirectory(path)
    directory = ModelDirectory(default_model_dir())
    if create_default and not directory.exists():
        directory.init("paper")
    return directory
