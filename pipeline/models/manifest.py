"""The model directory: a ``manifest.json`` listing each member's spec, plus checkpoint files.

Layout::

    <model dir>/manifest.json        {"format_version": 2, "members": [...], "ensembles": {...}}
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
from typing import TYPE_CHECKING, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.models.checkpoint import file_sha256, read_state_dict
from pipeline.models.spec import MemberSpec, paper_members, tiny_members

if TYPE_CHECKING:
    from pipeline.models.importers.base import ImportedMember

MANIFEST_NAME = "manifest.json"
Preset = Literal["paper", "tiny"]
#: The environment variable that picks the ensemble (beside ``InferenceSettings.ensemble``).
ENSEMBLE_ENV = "DFD_ENSEMBLE"
#: ``default_ensemble`` value that picks the first ensemble of :data:`AUTO_ORDER` whose members
#: all have trained weights present, else the first of them that exists.
AUTO = "auto"
AUTO_ORDER = ("paper", "open", "mesonet")
#: The ensemble of every member whose trained weights are public or ship with dfd (MesoNet's
#: four and the members this project trained, ``pipeline/models/bundled``).
OPEN = "open"


class Manifest(BaseModel):
    """The members of a model directory and the named ensembles made of them.

    Format 1 (no ``ensembles``) is read as one implicit ensemble of all members.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1, 2] = 2
    ensemble_version: str = "0.0.0"
    members: list[MemberSpec]
    #: Ensemble name -> member names. ``paper`` is the five of paper 3.2, ``mesonet`` the four
    #: MesoNet detectors; users add their own.
    ensembles: dict[str, list[str]] = {}
    #: The ensemble used when none is asked for (``dfd models use NAME``), or ``auto``.
    default_ensemble: str = AUTO

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if not names:
            raise ValueError("a manifest needs at least one member")
        for ensemble, listed in self.ensembles.items():
            if not listed:
                raise ValueError(f"ensemble {ensemble!r} has no members")
            unknown = [n for n in listed if n not in names]
            if unknown:
                raise ValueError(f"ensemble {ensemble!r} names unknown members {unknown}")
            if len(set(listed)) != len(listed):
                raise ValueError(f"ensemble {ensemble!r} lists a member twice")
        if self.default_ensemble != AUTO and self.default_ensemble not in self.ensembles:
            raise ValueError(f"default_ensemble {self.default_ensemble!r} is not an ensemble")
        return self

    def ensemble(self, name: str) -> list[MemberSpec]:
        if name not in self.ensembles:
            known = ", ".join(self.ensembles) or "none"
            raise ConfigError(f"no ensemble named {name!r} in the manifest (ensembles: {known})")
        return [self.member(n) for n in self.ensembles[name]]

    def with_member(self, spec: MemberSpec, ensembles: tuple[str, ...] = ()) -> Manifest:
        """A copy with ``spec`` added (or replacing the member of that name), listed in
        ``ensembles`` (created when missing)."""
        members = [m for m in self.members if m.name != spec.name]
        index = next((i for i, m in enumerate(self.members) if m.name == spec.name), None)
        members.insert(len(members) if index is None else index, spec)
        groups = {k: list(v) for k, v in self.ensembles.items()}
        if self.format_version == 1 and not groups:
            # An old manifest's implicit ensemble keeps its members when a new one arrives.
            groups["default"] = [m.name for m in self.members]
        for name in ensembles:
            listed = groups.setdefault(name, [])
            if spec.name not in listed:
                listed.append(spec.name)
        return self.model_copy(
            update={"members": members, "ensembles": groups, "format_version": 2}
        )

    def member(self, name: str) -> MemberSpec:
        for spec in self.members:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"no member named {name!r}; the manifest has {[m.name for m in self.members]}"
        )

    def resolve(
        self,
        directory: ModelDirectory,
        ensemble: str | None = None,
        members: list[str] | None = None,
    ) -> tuple[str, list[MemberSpec]]:
        """The ensemble to run: ``(name, specs)``.

        ``members`` (an explicit list) wins, then ``ensemble``, then ``$DFD_ENSEMBLE``, then the
        manifest's ``default_ensemble``. ``auto`` picks the first of ``paper``, ``open``,
        ``mesonet`` whose members all have trained weights on disk, else the first of them that
        exists (untrained: every output then says so); a manifest with no ensembles runs all
        members.
        """
        if members is not None:
            return "custom", [self.member(n) for n in members]
        chosen = ensemble or os.environ.get(ENSEMBLE_ENV) or self.default_ensemble
        if chosen != AUTO:
            return chosen, self.ensemble(chosen)
        if not self.ensembles:
            return "default", list(self.members)
        candidates = [n for n in AUTO_ORDER if n in self.ensembles] or list(self.ensembles)
        for name in candidates:
            if all(directory.has_weights(spec) for spec in self.ensemble(name)):
                return name, self.ensemble(name)
        return candidates[0], self.ensemble(candidates[0])


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

    def has_weights(self, spec: MemberSpec) -> bool:
        """Whether the member's checkpoint is named and on disk (not whether it is intact)."""
        path = self.checkpoint_path(spec)
        return path is not None and path.is_file()

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
        manifest = Manifest(members=members, ensembles={"paper": [m.name for m in members]})
        if preset == "paper":
            from pipeline.models.catalog import BUNDLED, catalog_specs

            # The MesoNet members are listed without weights: `dfd models fetch mesonet`
            # brings them, and `auto` then picks them until the paper's weights are imported.
            for spec in catalog_specs("mesonet"):
                manifest = manifest.with_member(spec, ("mesonet", OPEN))
            for bundled in BUNDLED.values():
                if bundled.spec_file.is_file():  # listed untrained until fetched
                    untrained = bundled.spec().model_copy(
                        update={
                            "checkpoint": None,
                            "sha256": None,
                            "training": None,
                            "trained_on": "not trained",
                            "version": "0.0.0",
                        }
                    )
                    manifest = manifest.with_member(untrained, bundled.ensembles)
        self.save(manifest)
        return manifest

    def add_member(
        self,
        imported: ImportedMember,
        *,
        version: str,
        trained_on: str,
        licence: str | None = None,
        source: str | None = None,
        ensembles: tuple[str, ...] = (),
    ) -> MemberSpec:
        """Write a converted checkpoint as ``<name>.safetensors`` and record it in the manifest.

        The state dict is loaded strictly into the member's network first, so a checkpoint that
        does not fit is refused before anything is written; the file is written atomically and
        the manifest last, so a failure leaves the directory as it was.
        """
        import torch
        from safetensors.torch import save_file

        from pipeline.models.checkpoint import check_state_dict
        from pipeline.models.registry import build_network

        spec = imported.spec
        state = {k: v.detach().cpu().contiguous() for k, v in imported.state.items()}
        # Keys and shapes only: a network on the meta device allocates no weights (a ViT-B
        # took 2 s to build for this check on the CPU).
        with torch.device("meta"):
            net = build_network(spec)
        check_state_dict(net, state, f"converted checkpoint of {spec.name}")
        manifest = self.load() if self.exists() else None
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{spec.name}.safetensors"
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            save_file(state, str(tmp))
            digest = file_sha256(tmp)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        update: dict[str, object] = {
            "checkpoint": dest.name,
            "sha256": digest,
            "version": version,
            "trained_on": trained_on,
        }
        if licence is not None:
            update["licence"] = licence
        if source is not None:
            update["source"] = source
        new_spec = spec.model_copy(update=update)
        if manifest is None:
            manifest = Manifest(
                members=[new_spec], ensembles={name: [spec.name] for name in ensembles}
            )
        else:
            manifest = manifest.with_member(new_spec, ensembles)
        self.save(manifest)
        return new_spec

    def use(self, ensemble: str) -> Manifest:
        """Make ``ensemble`` (or ``auto``) the default of this directory."""
        manifest = self.load()
        if ensemble != AUTO:
            manifest.ensemble(ensemble)  # exists?
        manifest = manifest.model_copy(update={"default_ensemble": ensemble})
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
