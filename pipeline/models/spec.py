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


class MemberSpec(BaseModel):
    """One ensemble member: architecture, preprocessing, weights and provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    architecture: Literal["efficientnet", "detr"]
    backbone: str
    input_size: int = Field(300, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: DetrHeadSpec | None = None
    #: Checkpoint file name, relative to the model directory (``.pt`` or ``.safetensors``).
    checkpoint: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    version: str = "0.0.0"
    trained_on: str = "not trained"
    licence: str = "Apache-2.0"
    description: str = ""

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std must be positive")
        return v

    @model_validator(mode="after")
    def _head_matches(self) -> MemberSpec:
        if (self.architecture == "detr") != (self.head is not None):
            raise ValueError("a 'detr' member needs a head spec, an 'efficientnet' member none")
        return self

    @property
    def preprocess_key(self) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        """Members with equal keys share one preprocessed batch."""
        return (self.input_size, self.mean, self.std)

    def architecture_digest(self) -> str:
        """Hash of everything that shapes the network (not weights or provenance)."""
        shape = self.model_dump(include={"architecture", "backbone", "input_size", "head"})
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
