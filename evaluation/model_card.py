"""The model card (Mitchell et al. 2019), rendered from the model manifest and the latest report.

Paper section 3.4: the service documents itself in a model card with its intended use, caveats
and recommendations for non-expert readers, and its evaluation on three datasets with the metrics
explained. The sections here are Mitchell et al.'s: model details, intended use, factors, metrics,
evaluation data, training data, quantitative analyses, ethical considerations, caveats and
recommendations, plus the versions everything refers to.

Nothing in a card is written by hand for a given model: members, versions and weights come from
the manifest (``<model dir>/manifest.json``), figures from a report's ``metrics.json`` (written
by ``dfd report``). The card says plainly when members run untrained, when figures are missing,
and when the figures were measured with other models than the ones the manifest now lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from evaluation.render import DASH, Table, dataset_name, pct, render_html, render_markdown
from evaluation.report import REPORT_JSON, load_report
from evaluation.report_tables import table1, table2
from evaluation.run_metrics import RunMetrics, compute_run_metrics
from pipeline.errors import ConfigError, DfdError
from pipeline.models import InferenceSettings, MemberInfo
from pipeline.models.manifest import Manifest, resolve_model_dir
from pipeline.models.member import expected_infos, models_digest, resolve_ensemble
from pipeline.result import SCHEMA_VERSION, ScoreBands
from pipeline.version import __version__

CardFormat = Literal["markdown", "html"]
TITLE = "Model card: DeepFake detection service"

PAPER = (
    "S. Baxevanakis, G. Kordopatis-Zilos, P. Galopoulos, L. Apostolidis, K. Levacher, "
    "I. B. Schlicht, D. Teyssou, I. Kompatsiaris, S. Papadopoulos: The MeVer DeepFake "
    "Detection Service: Lessons Learnt from Developing and Deploying in the Wild (MAD '22)"
)


def find_report(path: Path) -> Path | None:
    """The newest ``metrics.json`` at ``path`` (a report folder, the file itself, or a folder
    holding report folders up to two levels down); None when there is none."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    candidates = [
        *path.glob(REPORT_JSON),
        *path.glob(f"*/{REPORT_JSON}"),
        *path.glob(f"*/*/{REPORT_JSON}"),
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _figures(report: Path | None) -> tuple[list[RunMetrics], str]:
    """Runs to show and where they came from ('' when there are none)."""
    if report is None:
        return [], ""
    report = Path(report)
    if (report / "run.json").is_file():  # a run folder: compute its figures now
        return [compute_run_metrics(report, n_boot=200)], f"run {report}"
    found = find_report(report)
    if found is None:
        return [], ""
    runs, payload = load_report(found)
    return runs, f"report {found.parent} ({payload.get('generated_at', '?')[:16]})"


def _training_line(manifest: Manifest, name: str) -> str:
    """How ``dfd train`` made a member's weights, when it did ('' otherwise)."""
    record = next((m.training for m in manifest.members if m.name == name), None)
    if record is None:
        return ""
    r, v = record.recipe, record.validation
    commit = f", commit {record.git_commit[:12]}" if record.git_commit else ""
    return (
        f". Trained here by dfd train {record.code_version}{commit}: {record.frames} faces of "
        f"{record.videos} videos ({', '.join(record.manipulations)})"
        + (f", with {record.pseudo_fakes}" if record.pseudo_fakes else "")
        + f"; started from {record.init}; {r.get('optimizer', '?')} lr {r.get('lr', '?')}, "
        f"batch {r.get('batch_size', '?')}, {r.get('epochs', '?')} epochs, augmentations: "
        f"{r.get('augmentations', '?')}; best epoch {int(v.get('epoch', 0))}: validation AUC "
        f"{v.get('auc', float('nan')):.3f} on {int(v.get('frames', 0))} faces ({record.split})"
    )


def _members_table(manifest: Manifest, infos: Sequence[MemberInfo]) -> Table:
    weights = {i.name: i for i in infos}
    rows = []
    for spec in manifest.members:
        if spec.name not in weights:
            continue
        info = weights[spec.name]
        rows.append(
            [
                spec.name,
                spec.architecture + (f" ({spec.head.position} positions)" if spec.head else ""),
                spec.backbone or DASH,
                f"{spec.input_size} px",
                spec.version,
                "TRAINED" if info.weights == "trained" else "UNTRAINED (random init)",
                info.trained_on,
                spec.licence,
                spec.source or DASH,
                f"{spec.weight:g}",
                (info.sha256 or DASH)[:12],
            ]
        )
    return Table(
        [
            "member",
            "architecture",
            "backbone",
            "input",
            "version",
            "weights",
            "trained on",
            "licence",
            "source",
            "weight",
            "sha256",
        ],
        rows,
        caption="Ensemble members: probabilities averaged, weighted by each member's weight",
    )


@dataclass(frozen=True)
class _CardFacts:
    """What every section of a card may draw on."""

    manifest: Manifest
    infos: Sequence[MemberInfo]
    runs: Sequence[RunMetrics]
    #: The models digest of the members the manifest lists now.
    current: str
    ensemble: str

    @property
    def untrained(self) -> list[str]:
        return [i.name for i in self.infos if i.weights != "trained"]


def _sections(
    manifest: Manifest,
    infos: Sequence[MemberInfo],
    runs: Sequence[RunMetrics],
    source: str,
    model_dir: Path,
    ensemble: str = "default",
) -> list[tuple[str, Any]]:
    """The card as :data:`~evaluation.render.Items`: Mitchell et al.'s sections, in their order."""
    facts = _CardFacts(manifest, infos, runs, models_digest(infos), ensemble)
    items = _header(facts, source, model_dir)
    for section in (
        _model_details,
        _intended_use,
        _factors,
        _metrics,
        _evaluation_data,
        _training_data,
        _quantitative_analyses,
        _ethical_considerations,
        _caveats,
        _versions,
    ):
        items += section(facts)
    return items


def _header(facts: _CardFacts, source: str, model_dir: Path) -> list[tuple[str, Any]]:
    """Title, provenance, and the warnings a reader must see first."""
    infos, runs, untrained = facts.infos, facts.runs, facts.untrained
    measured = sorted({d for r in runs for d in r.models_digests})
    items: list[tuple[str, Any]] = [
        ("h1", TITLE),
        (
            "p",
            f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the model manifest "
            f"{model_dir / 'manifest.json'}"
            + (f" and the {source}." if source else "; no evaluation report was given."),
        ),
    ]
    if untrained:
        items.append(
            (
                "warn",
                f"{len(untrained)} of {len(infos)} detectors have NO TRAINED WEIGHTS "
                f"({', '.join(untrained)}): they run from random initialisation, so the "
                "service's scores carry no information about manipulation. Import trained "
                "weights with `dfd models import` before relying on any score.",
            )
        )
    for caveat in dict.fromkeys(i.caveat for i in infos if i.caveat):
        items.append(("warn", caveat + "."))
    if not runs:
        items.append(
            (
                "warn",
                "Evaluation figures are MISSING: no report was found, so this card states no "
                "accuracy at all. Run `dfd evaluate` on a dataset and `dfd report` on the run.",
            )
        )
    elif facts.current not in measured:
        items.append(
            (
                "warn",
                f"The figures below were measured with model set(s) {', '.join(measured)}, not "
                f"with the models the manifest now lists ({facts.current}): they do not describe "
                "the current models. Re-run the evaluation.",
            )
        )
    return items


def _model_details(facts: _CardFacts) -> list[tuple[str, Any]]:
    sizes = "/".join(str(s) for s in sorted({i.input_size for i in facts.infos}))
    return [
        ("h2", "Model details"),
        (
            "list",
            [
                f"Service version {__version__} (x.y.z as in paper 5.3); result schema "
                f"{SCHEMA_VERSION}; ensemble {facts.ensemble!r} (version "
                f"{facts.manifest.ensemble_version}); models digest {facts.current}.",
                "Type: a pipeline, not a single network (paper 3.1): shot segmentation, MTCNN "
                "face detection (square boxes enlarged 1.3x, at most 64 frames per shot), face "
                "tracks (graph of face similarity, connected components, small tracks dropped), "
                f"an ensemble of {len(facts.infos)} detectors on face crops resized to "
                f"{sizes} px (the paper: 300), and aggregation "
                "(track = mean of its faces, shot = max of its tracks, video = max of its shots; "
                "image = max over faces).",
                f"Method: {PAPER}. This is an open re-implementation; the paper's weights are "
                "private and are not part of it.",
                "Licence: Apache-2.0 (code); each member's weights carry the licence listed below.",
            ],
        ),
        ("table", _members_table(facts.manifest, facts.infos)),
    ]


def _intended_use(facts: _CardFacts) -> list[tuple[str, Any]]:
    bands = ScoreBands()
    return [
        ("h2", "Intended use"),
        (
            "list",
            [
                "Primary use: help experts (researchers in DeepFake detection, media "
                "verification professionals, journalists with technical experience) judge "
                "whether the faces in a video or image were manipulated, as one signal among "
                "others (paper 3.4).",
                "Output: a DeepFake probability per face, face track, shot and medium, with "
                f"plain-language bands (below {bands.real_below:.2f}: likely real; from "
                f"{bands.manipulated_from:.2f}: likely manipulated; between: uncertain).",
                "Out of scope: the sole basis of a decision about a person; legal evidence; "
                "automatic moderation without human review; manipulations that do not change "
                "a face (audio, lip-sync on the real face may be missed, edits of the scene); "
                "identifying people.",
            ],
        ),
    ]


def _factors(facts: _CardFacts) -> list[tuple[str, Any]]:
    return [
        ("h2", "Factors"),
        (
            "list",
            [
                "Manipulation type: identity swaps (FaceSwap, DeepFakes) are detected far better "
                "than expression swaps (NeuralTextures, Face2Face) in the paper (Table 2).",
                "Source and quality: compression, resolution, face size, pose, occlusion and "
                "lighting change the crops the detectors see; FF++ is scored per compression "
                "level.",
                "Generator novelty: fakes from methods absent from the training data are "
                "harder (paper 4.2.1: a 13-point BA drop on FF++ against CelebDF and WDF).",
                "Demographic groups: NOT evaluated here; the datasets carry no such labels, so "
                "no claim about equal performance across groups can be made.",
                "Adversarial perturbations: see Ethical considerations.",
                "Evaluation factors reported below: dataset and manipulation method.",
            ],
        ),
    ]


def _metrics(facts: _CardFacts) -> list[tuple[str, Any]]:
    return [
        ("h2", "Metrics"),
        (
            "list",
            [
                "Balanced accuracy (BA): the mean of the recall on fakes and on reals, 0-100% "
                "(higher is better), chosen because the datasets are imbalanced (paper 4.1.2). "
                "A medium is called fake when its score >= the threshold: 0.5, and a threshold "
                "chosen on a validation split where one was evaluated.",
                "AUC: area under the ROC curve, 0-1 (higher is better; 0.5 is chance), "
                "independent of any threshold.",
                "Uncertainty: 95% stratified bootstrap intervals at video level; none at frame "
                "level (faces of one video are not independent).",
                "Videos that fail or show no face are excluded and counted; never scored 0.5.",
            ],
        ),
    ]


def _evaluation_data(facts: _CardFacts) -> list[tuple[str, Any]]:
    if not facts.runs:
        return [("h2", "Evaluation data"), ("p", "Missing: no evaluation report.")]
    rows = []
    for r in facts.runs:
        overall = [g for g in r.video.rows if g.group.get("manipulation") == "all"]
        for g in overall:
            d = g.group["dataset"]
            rows.append(
                [
                    r.name,
                    dataset_name(d),
                    r.evaluated_on,
                    str(g.n_real),
                    str(g.n_fake),
                    str(g.n_excluded),
                ]
            )
    table = Table(
        ["run", "dataset", "rows", "real", "fake", "excluded (no face or error)"],
        rows,
        caption="Datasets of the figures below (official layouts and splits)",
    )
    return [("h2", "Evaluation data"), ("table", table)]


def _training_data(facts: _CardFacts) -> list[tuple[str, Any]]:
    infos = facts.infos
    trained_on = sorted({i.trained_on for i in infos if i.weights == "trained"})
    return [
        ("h2", "Training data"),
        (
            "list",
            [
                f"{i.name}: "
                + (i.trained_on if i.weights == "trained" else "none (random initialisation)")
                + (_training_line(facts.manifest, i.name) if i.weights == "trained" else "")
                for i in infos
            ]
            + (
                ["As recorded in the manifest when the weights were imported."]
                if trained_on
                else ["No member has trained weights."]
            ),
        ),
    ]


def _quantitative_analyses(facts: _CardFacts) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("h2", "Quantitative analyses")]
    if not facts.runs:
        items.append(
            (
                "p",
                "Missing: no figures. The paper's own service reported BA 70.31% / AUC 0.7705 "
                "on FaceForensics++, 82.75% / 0.9259 on CelebDF and 84.94% / 0.9373 on "
                "WildDeepFake with its private weights; those numbers do not describe this "
                "installation.",
            )
        )
        return items
    items.append(("table", table1(facts.runs)))
    t2 = table2(facts.runs)
    if t2 is not None:
        items.append(("table", t2))
    for r in facts.runs:
        if r.threshold is None or r.video_at_threshold is None:
            continue
        at_t = next(
            (x for x in r.video_at_threshold.rows if x.group.get("manipulation") == "all"), None
        )
        if at_t is not None:
            items.append(
                (
                    "p",
                    f"{r.name}: BA at the validation-chosen threshold "
                    f"{r.threshold:.3f} = {pct(at_t.balanced_accuracy)}.",
                )
            )
    return items


def _ethical_considerations(facts: _CardFacts) -> list[tuple[str, Any]]:
    return [
        ("h2", "Ethical considerations"),
        (
            "list",
            [
                "Adversarial robustness: with white-box access, a PGD attack brings the paper's "
                "ensemble to chance level (BA 50% under the norm-inf setting, paper Table 3). "
                "Publishing weights makes such attacks easy; keep access controlled.",
                "A false 'manipulated' can damage the reputation of a real person; a false "
                "'real' can lend credibility to a fake. Communicate scores as probabilities.",
                "Privacy: analysed media contain faces of identifiable people; the service "
                "stores results and crops, which should be deleted when no longer needed.",
                "Evaluation datasets show real people (actors, celebrities, YouTube subjects) "
                "under the datasets' own licences and terms.",
            ],
        ),
    ]


def _caveats(facts: _CardFacts) -> list[tuple[str, Any]]:
    caveats = [
        "A score is a model's estimate, not proof; read it with the shot, track and face "
        "views, and with other verification steps.",
        "No face found means no score, not 'real'.",
        "Expect lower accuracy on expression swaps and on generators newer than the training "
        "data; expect lower accuracy on heavily compressed or small faces.",
    ]
    if facts.untrained:
        caveats.insert(0, "UNTRAINED members are loaded: scores are not meaningful (see above).")
    if not facts.runs:
        caveats.insert(0, "No evaluation figures exist for these models: accuracy is unknown.")
    return [("h2", "Caveats and recommendations"), ("list", caveats)]


def _versions(facts: _CardFacts) -> list[tuple[str, Any]]:
    """The versions everything in the card refers to (beyond Mitchell et al.)."""
    return [
        ("h2", "Versions"),
        (
            "list",
            [
                f"service {__version__}; result schema {SCHEMA_VERSION}; ensemble "
                f"{facts.manifest.ensemble_version}; models digest {facts.current}",
                *(f"{i.name} {i.version} ({i.weights})" for i in facts.infos),
                *(
                    f"figures: run {r.name}, service {', '.join(r.service_versions)}, models "
                    f"{', '.join(r.models_digests)}"
                    for r in facts.runs
                ),
            ],
        ),
    ]


def render_model_card(
    model_dir: Path | None = None,
    report: Path | None = None,
    *,
    fmt: CardFormat = "markdown",
) -> str:
    """The model card as Markdown or a standalone HTML page.

    Args:
        model_dir: the model directory (default: the service's default one).
        report: a report folder written by ``dfd report`` (or its ``metrics.json``), a folder
            holding report folders (the newest is used), or a run folder (figures computed
            now); None or nothing found: the card says the figures are missing.
        fmt: ``"markdown"`` or ``"html"``.

    Raises:
        ConfigError: no manifest in ``model_dir``, or a report that cannot be read.
    """
    if fmt not in ("markdown", "html"):
        raise ConfigError(f"model card format must be 'markdown' or 'html', got {fmt!r}")
    directory = resolve_model_dir(model_dir)
    manifest = directory.load()
    settings = InferenceSettings(model_dir=directory.root)
    try:
        infos = expected_infos(settings)
        _, ensemble, _ = resolve_ensemble(settings)
    except DfdError as exc:
        raise ConfigError(f"cannot describe the models in {directory.root}: {exc.detail}") from exc
    runs, source = _figures(report)
    items = _sections(manifest, infos, runs, source, directory.root, ensemble)
    base = Path.cwd()
    if fmt == "html":
        return render_html(items, base, TITLE)
    return render_markdown(items, base)
