"""Face tracks within a shot: a face graph, its connected components, small ones dropped.

Paper section 3.1 (Face Clustering, after [6]): embed every detected face, connect faces whose
embedding similarity exceeds 0.8, take the connected components as face clusters, and drop the
clusters with fewer faces than 20% of the shot's sampled frames (they are mostly false
detections). The remaining faces go on to the detectors; aggregation averages within a cluster.

The embedder is facenet-pytorch's InceptionResnetV1 trained on VGGFace2. Its weights are not in the
wheel and are never downloaded here, so they load from a local file. Without them the graph still
has *track continuity* edges: boxes that overlap strongly in consecutive sampled frames are the same
face. Those edges are always added (with or without embeddings), and :class:`Tracks` records which
cues built the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import CheckpointError

Box = tuple[float, float, float, float]

#: facenet-pytorch's input side and its fixed standardisation, (x - 127.5) / 128.
EMBED_SIZE = 160
_STD_MEAN = 127.5
_STD_SCALE = 128.0


def load_inception_resnet_v1(weights_path: Path) -> torch.nn.Module:
    """InceptionResnetV1 (embedding mode) with the state dict at ``weights_path``, strictly.

    facenet-pytorch's released VGGFace2 file (``20180402-114759-vggface2.pt``) also holds the
    8631-way training classifier (``logits.*``); a matching ``logits`` layer is added before
    loading so that ``strict=True`` holds, and is never used (embedding mode).

    Raises:
        CheckpointError: the file is missing, unreadable, not a state dict, or does not match.
    """
    from facenet_pytorch import InceptionResnetV1

    path = Path(weights_path)
    if not path.is_file():
        raise CheckpointError(
            f"face embedder weights not found at {path}; install the VGGFace2 InceptionResnetV1 "
            "state dict there, or run without embeddings (box-overlap tracks only)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read face embedder weights {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    model = InceptionResnetV1(pretrained=None, classify=False)
    logits = state.get("logits.weight")
    if logits is not None and logits.ndim == 2:
        model.logits = torch.nn.Linear(logits.shape[1], logits.shape[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:3])
        raise CheckpointError(f"{path} does not match InceptionResnetV1: {first}") from exc
    return model.eval()


class FaceEmbedder:
    """VGGFace2 InceptionResnetV1 face embeddings from a local weights file.

    ``embed`` takes face crops (any size, ``(h, w, 3) uint8 RGB``), resizes each to 160 x 160,
    applies facenet's fixed standardisation ``(x - 127.5) / 128`` and returns
    ``(N, 512) float32`` rows of unit L2 norm (so a dot product is the cosine similarity).
    """

    name = "inception-resnet-v1-vggface2"

    def __init__(self, weights_path: Path, *, device: str = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.model = load_inception_resnet_v1(weights_path).to(self.device)
        self.batch_size = batch_size

    @staticmethod
    def preprocess(crops: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, 3, 160, 160) float32`` standardised input for the network."""
        resized = []
        for i, c in enumerate(crops):
            if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8 or 0 in c.shape[:2]:
                raise ValueError(f"crop {i}: expected (h, w, 3) uint8 RGB, got {c.shape} {c.dtype}")
            shrink = max(c.shape[:2]) > EMBED_SIZE
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            resized.append(cv2.resize(c, (EMBED_SIZE, EMBED_SIZE), interpolation=interpolation))
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
        return (x - _STD_MEAN) / _STD_SCALE

    @torch.inference_mode()
    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 512) float32`` unit-norm embeddings; ``(0, 512)`` for no crops."""
        if len(crops) == 0:
            return np.zeros((0, 512), dtype=np.float32)
        out = []
        for k in range(0, len(crops), self.batch_size):
            x = self.preprocess(crops[k : k + self.batch_size]).to(self.device)
            out.append(self.model(x).float().cpu())
        emb = torch.nn.functional.normalize(torch.cat(out), p=2, dim=1)
        return emb.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# The face graph


@dataclass(frozen=True)
class TrackFace:
    """A detected face of a shot: ``frame_pos`` is the position (0, 1, ...) of its frame among
    the shot's sampled frames, ``box`` its ``(x1, y1, x2, y2)`` in frame pixels."""

    frame_pos: int
    box: Box


@dataclass(frozen=True)
class Tracks:
    """Face clusters of one shot.

    ``clusters``: kept clusters, each a sorted list of indices into the ``faces`` given to
    :func:`build_tracks`, largest cluster first (ties: earliest first face). ``dropped``: the
    clusters below the size rule, same layout. ``cues``: which edges built the graph,
    ``["iou"]`` or ``["iou", "embedding"]``.
    """

    clusters: list[list[int]]
    dropped: list[list[int]] = field(default_factory=list)
    cues: list[str] = field(default_factory=list)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes, in [0, 1]."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def build_tracks(
    faces: Sequence[TrackFace],
    n_sampled_frames: int,
    embeddings: np.ndarray | None = None,
    *,
    sim_threshold: float = 0.8,
    iou_threshold: float = 0.5,
    max_frame_gap: int = 2,
    min_fraction: float = 0.2,
) -> Tracks:
    """Group a shot's faces into tracks: connected components of the face graph.

    Edges (undirected):

    * *embedding* (when ``embeddings``, ``(len(faces), 512)`` unit rows, is given): cosine
      similarity ``> sim_threshold`` (paper: 0.8), between any two faces of the shot;
    * *continuity* (always): ``box_iou >= iou_threshold`` between faces whose ``frame_pos``
      differ by 1 to ``max_frame_gap``. A gap of 2 bridges one sampled frame where the detector
      missed the face (blur, a turned head) without linking across long gaps, where a box at the
      same place is less likely to be the same person. Faces of the same frame are never linked
      by overlap (MTCNN's non-maximum suppression already merged duplicates).

    Clusters with fewer faces than ``min_fraction x n_sampled_frames`` (paper: 20% of the shot's
    frames) are dropped; a cluster of exactly that many is kept.
    """
    n = len(faces)
    if embeddings is not None and (embeddings.ndim != 2 or embeddings.shape[0] != n):
        raise ValueError(f"embeddings must be ({n}, D), got {embeddings.shape}")
    for f in faces:
        if not 0 <= f.frame_pos < max(n_sampled_frames, 1):
            raise ValueError(f"frame_pos {f.frame_pos} outside 0..{n_sampled_frames - 1}")
    uf = _UnionFind(n)

    by_frame: dict[int, list[int]] = {}
    for i, f in enumerate(faces):
        by_frame.setdefault(f.frame_pos, []).append(i)
    for pos, members in by_frame.items():
        for gap in range(1, max_frame_gap + 1):
            for i in members:
                for j in by_frame.get(pos + gap, ()):
                    if box_iou(faces[i].box, faces[j].box) >= iou_threshold:
                        uf.union(i, j)

    cues = ["iou"]
    if embeddings is not None:
        cues.append("embedding")
        # float64: a similarity of exactly the threshold must not pass through rounding.
        emb = embeddings.astype(np.float64)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        rows, cols = np.nonzero(np.triu(emb @ emb.T > sim_threshold, k=1))
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            uf.union(i, j)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    # "Fewer faces than 20% of the frames", with a small tolerance for float products such as
    # 0.28 * 25 = 7.000000000000001, which must still keep a cluster of exactly 7.
    minimum = min_fraction * n_sampled_frames - 1e-9
    kept = [g for g in ordered if len(g) >= minimum]
    dropped = [g for g in ordered if len(g) < minimum]
    return Tracks(clusters=kept, dropped=dropped, cues=cues)
