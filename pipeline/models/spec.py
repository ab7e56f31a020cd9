"""Typed specs of the ensemble members (paper section 3.2).

A spec is data: it says which architecture to build, how its input is preprocessed and where its
weights live. Everything downstream (the in-process ensemble, Serve deployments, Ray Data actors,
ART wrappers) derives preprocessing from the spec, never from hand-copied constants.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Paper 3.1, "Inference": every face is normalised by the ImageNet mean and standard deviation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class DetrHeadSpec(BaseModel):
    """A DETR-style encoder-decoder head (Carion et al. 2020) over backbone region activations.

    ``stages`` lists the backbone stages (timm ``out_indices``) that get a head each; one stage is
    the paper's models 2 and 3, two stages is this project's reading of model 4 ("multi-head").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(256, ge=8)
    nhead: int = Field(8, ge=1)
    enc_layers: int = Field(3, ge=0)
    dec_layers: int = Field(3, ge=1)
    dim_feedforward: int = Field(1024, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    num_queries: int = Field(1, ge=1)
    position: Literal["sine", "learned"] = "sine"
    #: Largest feature-map side the learned embedding covers (DETR uses 50).
    max_positions: int = Field(50, ge=1)
    stages: tuple[int, ...] = (4,)

    @model_validator(mode="after")
    def _check(self) -> DetrHeadSpec:
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if self.position == "sine" and self.d_model % 4:
            raise ValueError("sine positional embeddings need d_model divisible by 4")
        if not self.stages:
            raise ValueError("at least one backbone stage is needed")
        return self


#: How a network's raw output becomes the probability of manipulation (see :mod:`.outputs`):
#: ``fake-logit`` one logit, sigmoid = P(fake) (the paper's members); ``real-logit`` one logit,
#: sigmoid = P(real) (MesoNet); ``softmax`` one logit per class, ``fake_index`` is the fake one.
OutputKind = Literal["fake-logit", "real-logit", "softmax"]
#: ``stretch`` resizes the crop to ``input_size`` squared; ``letterbox`` keeps its aspect ratio
#: (longest side to ``input_size``) and pads the rest with zeros, centred (the DFDC winner's
#: ``isotropically_resize_image`` + ``put_to_center``). Face crops are square, so the two
#: differ only where a face's square did not fit in the frame.
ResizeRule = Literal["stretch", "letterbox"]
#: Architecture options: small typed values only, hashed into the architecture digest.
OptionValue = str | int | float | bool
#: Paper 3.1: the face box grows by 1.3x (30% per side length), square.
PAPER_CROP_MARGIN = 1.3


class TrainingRecord(BaseModel):
    """How a member trained by ``dfd train`` was made: data, recipe, validation, code.

    Paper section 5.3: a model's version changes when the model changes; this record says what
    changed it, and the model card shows it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Datasets and manipulations of the training faces (``"original"`` for real ones).
    datasets: tuple[str, ...]
    manipulations: tuple[str, ...]
    #: Which split trained and which validated, and where the splits came from.
    split: str
    videos: int = Field(ge=0)
    #: Face crops seen per epoch (before pseudo-fakes).
    frames: int = Field(ge=0)
    #: How pseudo-fakes were made, if any (self-blended images).
    pseudo_fakes: str = ""
    #: Where the weights started (random, a pretrained backbone, a checkpoint, a member).
    init: str
    #: Optimiser, learning rate, batch, epochs, augmentations, workers...
    recipe: dict[str, OptionValue]
    #: Validation figures of the kept (best) epoch: auc, balanced_accuracy, loss, epoch, frames.
    validation: dict[str, float]
    #: ``dfd`` version and git commit of the code that trained it; the command line.
    code_version: str
    git_commit: str = ""
    command: str = ""
    #: Digest of the faces folder's extraction settings and parts (which crops trained it).
    faces_digest: str = ""
    finished_at: str = ""


class MemberSpec(BaseModel):
    """One ensemble member: architecture, preprocessing, output convention, weights, provenance.

    Preprocessing (crop margin, resize rule, input size, mean/std) and the output convention are
    data here, read by every path that runs the member (CLI, Serve, Ray Data, ART), so that a
    member imported from another project runs exactly as its authors preprocess it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    #: A name in :data:`pipeline.models.registry.ARCHITECTURES`.
    architecture: str
    #: timm model name where the architecture builds on one ("" where it does not).
    backbone: str = ""
    #: Architecture-specific switches (e.g. EfficientNet static padding), see the registry.
    options: dict[str, OptionValue] = Field(default_factory=dict)
    input_size: int = Field(300, ge=16, le=1024)
    #: Pixel values in [0, 1] become ``(x - mean) / std``; mean 0 and std 1 keep [0, 1].
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: ResizeRule = "stretch"
    #: Side of the member's square face crop / longer side of the detected face box. The
    #: pipeline cuts one crop per face at the largest margin of the ensemble's members; each
    #: member takes the centred square of its own margin from it (see ``preprocess.centre_crop``).
    crop_margin: float = Field(PAPER_CROP_MARGIN, ge=1.0, le=4.0)
    output: OutputKind = "fake-logit"
    #: Number of classes of a ``softmax`` output, and which class is "fake".
    num_classes: int = Field(1, ge=1)
    fake_index: int = Field(0, ge=0)
    #: Weight of this member in the ensemble's weighted mean of probabilities.
    weight: float = Field(1.0, gt=0.0)
    head: DetrHeadSpec | None = None
    #: Checkpoint file name, relative to the model directory (``.pt`` or ``.safetensors``).
    checkpoint: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    version: str = "0.0.0"
    trained_on: str = "not trained"
    licence: str = "Apache-2.0"
    #: Where the weights come from (upstream project, URL, file's sha256 as published).
    source: str = ""
    description: str = ""
    #: A limitation every result scored by this member states in plain words (members sharing
    #: a caveat state it once), e.g. that a 2018 model has limited reach on recent fakes.
    caveat: str = ""
    #: Set when the weights were trained by ``dfd train``.
    training: TrainingRecord | None = None

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        from pipeline.models.registry import ARCHITECTURES

        if v not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {v!r}; known: {', '.join(sorted(ARCHITECTURES))}"
            )
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std must be positive")
        return v

    @model_validator(mode="after")
    def _head_matches(self) -> MemberSpec:
        if (self.architecture == "detr") != (self.head is not None):
            raise ValueError("a 'detr' member needs a head spec, other architectures none")
        if self.output == "softmax":
            if self.num_classes < 2 or self.fake_index >= self.num_classes:
                raise ValueError(
                    f"a softmax output needs num_classes >= 2 and fake_index < num_classes, got "
                    f"{self.num_classes} and {self.fake_index}"
                )
        elif self.num_classes != 1:
            raise ValueError(f"a {self.output} output has one logit, not {self.num_classes}")
        return self

    @property
    def unit_key(self) -> tuple[int, str, float]:
        """Members with equal keys share one resized ``[0, 1]`` batch (input size, resize rule,
        crop margin); normalisation is each member's own."""
        return (self.input_size, self.resize, self.crop_margin)

    def architecture_digest(self) -> str:
        """Hash of everything that shapes the network (not weights or provenance)."""
        include = {"architecture", "backbone", "input_size", "head"}
        # Fields added after the first release enter the digest only when they differ from
        # their defaults, so the cached exports of existing members stay valid.
        extra = {"options": {}, "output": "fake-logit", "num_classes": 1, "fake_index": 0}
        include |= {k for k, default in extra.items() if getattr(self, k) != default}
        shape = self.model_dump(include=include)
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def paper_members(input_size: int = 300) -> list[MemberSpec]:
    """The five members of paper section 3.2 at full size.

    Model 4 is "a multi-head Transformer based on DETR"; the paper gives no more. We read it as
    DETR heads on two backbone stages (stride 16 and 32), each with its own query, whose logits are
    averaged: every member already uses multi-head *attention*, so the distinct architecture must
    be something else, and heads at two scales see blending artefacts at two granularities.
    """
    b4 = "efficientnet_b4"
    return [
        MemberSpec(
            name="m1_effb4",
            architecture="efficientnet",
            backbone=b4,
            input_size=input_size,
            description="Model 1: EfficientNet-B4 with a one-logit head.",
        ),
        MemberSpec(
            name="m2_effb4_detr_sine",
            architecture="detr",
            backbone=b4,
            input_size=input_size,
            head=DetrHeadSpec(position="sine"),
            description="Model 2: EfficientNet-B4 + DETR head, one query, fixed sine positions.",
        ),
        MemberSpec(
            name="m3_effb4_detr_learned",
            architecture="detr",
            backbone=b4,
            input_size=input_size,
            head=DetrHeadSpec(position="learned"),
            description="Model 3: EfficientNet-B4 + DETR head, one query, learned positions.",
        ),
        MemberSpec(
            name="m4_effb4_detr_multiscale",
            architecture="detr",
            backbone=b4,
            input_size=input_size,
            head=DetrHeadSpec(position="sine", stages=(3, 4)),
            description=(
                "Model 4: EfficientNet-B4 + two DETR heads (stride-16 and stride-32 stages), "
                "one query each, logits averaged."
            ),
        ),
        MemberSpec(
            name="m5_effv2m",
            architecture="efficientnet",
            backbone="tf_efficientnetv2_m",
            input_size=input_size,
            description="Model 5: EfficientNetV2-M with a one-logit head.",
        ),
    ]


def tiny_members(input_size: int = 64) -> list[MemberSpec]:
    """Five members with the paper's shapes on EfficientNet-B0 at a small input: for tests."""
    head = {"d_model": 32, "nhead": 4, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 64}
    full = paper_members(input_size)
    tiny = []
    for spec in full:
        update: dict[str, object] = {"backbone": "efficientnet_b0", "input_size": input_size}
        if spec.head is not None:
            update["head"] = spec.head.model_copy(update=head)
        tiny.append(spec.model_copy(update=update))
    return tiny
