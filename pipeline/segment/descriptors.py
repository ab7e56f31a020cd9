"""Region descriptors of a frame: the two implementations of :class:`RegionFeatureExtractor`.

* :class:`ResNetRMAC`, the paper's (ViSiL [35]): ResNet50 last conv map, R-MAC pooled; needs
  ResNet50 weights from a local file (never downloaded);
* :class:`ColourHistogramRegions` needs no weights: Hellinger-normalised HSV histograms over a
  multi-scale region grid, what runs when no ResNet50 weights are installed.

:func:`build_extractor` picks one. What is done with the descriptors is in
:mod:`pipeline.segment.shots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from pipeline.errors import CheckpointError

#: ImageNet statistics, the ones torchvision's ResNet50 weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class RegionFeatureExtractor(Protocol):
    """Frames in, one set of L2-normalised region descriptors per frame out.

    ``name`` is recorded in the result as the segmentation method. ``cut_threshold`` is the
    distance (``1 - Chamfer similarity``, in [0, 2]) above which a peak may be a cut, calibrated
    for this descriptor.
    """

    name: str
    cut_threshold: float

    def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``frames``: each ``(H, W, 3) uint8 RGB``. Returns one ``(R, D) float32`` per frame,
        each row of unit L2 norm."""
        ...


# --------------------------------------------------------------------------------------------
# Weight-free descriptor


def grid_regions(
    height: int, width: int, grids: Sequence[int] = (1, 2, 3)
) -> list[tuple[int, int, int, int]]:
    """Regions ``(y0, x0, y1, x1)`` in pixels: for each ``g`` in ``grids`` a g x g tiling.

    ``(1, 2, 3)`` gives the whole frame, its quarters and its ninths (14 regions), the same
    coarse-to-fine coverage R-MAC's three scales give, on a regular grid.
    """
    regions = []
    for g in grids:
        ys = np.linspace(0, height, g + 1).round().astype(int)
        xs = np.linspace(0, width, g + 1).round().astype(int)
        for i in range(g):
            for j in range(g):
                regions.append((int(ys[i]), int(xs[j]), int(ys[i + 1]), int(xs[j + 1])))
    return regions


class ColourHistogramRegions:
    """Soft-binned joint HSV histograms, Hellinger-normalised, over a whole + 2x2 + 3x3 grid.

    Each frame is reduced to ``work_width`` pixels wide (a histogram needs few pixels, and the
    reduction removes compression noise) and converted to HSV, with V replaced by
    ``sqrt(V * 255)`` so that the dark end of the range, where a stage or night scene lives, gets
    more bins (the darkest quarter of V fills half the range). For each of the 14 regions a joint
    ``h_bins x s_bins x v_bins`` histogram is accumulated with trilinear (soft) binning, hue
    wrapping around: a colour on a bin edge no longer flips between bins from frame to frame, which
    cut the largest within-shot distance on the shared test videos by a third. Its square root
    (Hellinger mapping) has unit L2 norm, so the dot product of two descriptors is the
    Bhattacharyya coefficient in [0, 1].

    Output per frame: ``(14, h_bins * s_bins * v_bins) float32``, rows of unit L2 norm.
    """

    name = "histogram"
    # Calibrated on the shared real videos at 1 fps: consecutive samples within a shot stay below
    # 0.1 (talking heads, a crowd walking, a hand-held close-up, a fast head turn); the hard cuts
    # between the concatenated clips of tests/pipeline/test_segment.py give 0.32 to 0.78, the dim
    # stage cuts of fr_short_hamilton_clip.mp4 0.21. Known false cuts at this value: a static
    # camera with a large car driving into view and an exposure change (0.19 to 0.28), a camera
    # jerked away from a bird's face (0.30).
    cut_threshold = 0.15

    def __init__(
        self,
        h_bins: int = 8,
        s_bins: int = 4,
        v_bins: int = 4,
        grids: Sequence[int] = (1, 2, 3),
        work_width: int = 192,
    ) -> None:
        self.bins = (h_bins, s_bins, v_bins)
        self.grids = tuple(grids)
        self.work_width = work_width

    def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._one(_check_frame(f)) for f in frames]

    def _one(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if w > self.work_width:
            new_h = max(1, round(h * self.work_width / w))
            rgb = cv2.resize(rgb, (self.work_width, new_h), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 2] = np.sqrt(hsv[..., 2] * 255.0)
        hb, sb, vb = self.bins
        # Continuous bin coordinates (bin k is centred on k): OpenCV's 8-bit hue spans 0..179.
        coords = (
            hsv[..., 0] * hb / 180.0,
            hsv[..., 1] * sb / 256.0 - 0.5,
            hsv[..., 2] * vb / 256.0 - 0.5,
        )
        lows = [np.floor(c) for c in coords]
        fracs = [c - lo for c, lo in zip(coords, lows, strict=True)]
        # The 8 corners of the trilinear stencil: (joint bin index, weight) maps.
        corners = []
        for dh in (0, 1):
            for ds in (0, 1):
                for dv in (0, 1):
                    ih = (lows[0].astype(np.int32) + dh) % hb  # hue is circular
                    is_ = np.clip(lows[1].astype(np.int32) + ds, 0, sb - 1)
                    iv = np.clip(lows[2].astype(np.int32) + dv, 0, vb - 1)
                    weight = (
                        (fracs[0] if dh else 1 - fracs[0])
                        * (fracs[1] if ds else 1 - fracs[1])
                        * (fracs[2] if dv else 1 - fracs[2])
                    )
                    corners.append(((ih * sb + is_) * vb + iv, weight))
        n_bins = hb * sb * vb
        regions = grid_regions(hsv.shape[0], hsv.shape[1], self.grids)
        out = np.zeros((len(regions), n_bins), dtype=np.float64)
        for r, (y0, x0, y1, x1) in enumerate(regions):
            for index, weight in corners:
                out[r] += np.bincount(
                    index[y0:y1, x0:x1].ravel(),
                    weights=weight[y0:y1, x0:x1].ravel(),
                    minlength=n_bins,
                )
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
        return np.sqrt(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# ResNet50 + R-MAC (paper)


def rmac_regions(
    height: int, width: int, levels: int = 3, overlap: float = 0.4
) -> list[tuple[int, int, int, int]]:
    """R-MAC regions ``(y0, x0, y1, x1)`` on a ``height x width`` feature map (Tolias et al.).

    The whole map, then at level ``l = 1..levels`` square regions of side
    ``floor(2 * min(H, W) / (l + 1))`` laid out uniformly with about ``overlap`` between
    neighbours; along the longer side one or more extra regions are added so that the layout
    covers it (the reference implementation's rule). A 7 x 12 map (a 16:9 frame at 224 px) gives
    1 + 2 + 6 + 12 = 21 regions, a 7 x 7 map 1 + 1 + 4 + 9 less the repeated whole map = 14.
    """
    w = min(width, height)
    regions = [(0, 0, height, width)]
    if w == 0:
        return regions
    # Number of extra regions along the long side: the one whose overlap is closest to `overlap`.
    steps = np.arange(2, 8)
    b = (max(height, width) - w) / (steps - 1)
    idx = int(np.argmin(np.abs((w * w - w * b) / (w * w) - overlap)))
    extra_w = idx + 1 if height < width else 0
    extra_h = idx + 1 if height > width else 0
    for level in range(1, levels + 1):
        side = math.floor(2 * w / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)
        n_w, n_h = level + extra_w, level + extra_h
        step_w = 0.0 if n_w == 1 else (width - side) / (n_w - 1)
        step_h = 0.0 if n_h == 1 else (height - side) / (n_h - 1)
        xs = [math.floor(half + k * step_w) - half for k in range(n_w)]
        ys = [math.floor(half + k * step_h) - half for k in range(n_h)]
        for y in ys:
            for x in xs:
                regions.append((y, x, min(height, y + side), min(width, x + side)))
    # The whole-map region can repeat at level 1 on square maps; duplicates add nothing.
    return list(dict.fromkeys(regions))


def load_resnet50(weights_path: Path) -> torch.nn.Module:
    """A torchvision ResNet50 with the state dict at ``weights_path`` (``strict=True``).

    The file is a ``state_dict`` of ``torchvision.models.resnet50()`` (as torchvision's own
    ``IMAGENET1K_*`` downloads are), read with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a state dict, or does not match.
    """
    from torchvision.models import resnet50

    path = Path(weights_path)
    if not path.is_file():
        raise CheckpointError(
            f"ResNet50 weights not found at {path}; install them there or use method='histogram'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read ResNet50 weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a state dict (found {type(state).__name__})")
    model = resnet50(weights=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise CheckpointError(
            f"{path} does not match torchvision's resnet50: {' '.join(first)}"
        ) from exc
    return model.eval()


class ResNetRMAC:
    """ResNet50 (torchvision layout) last conv map, R-MAC pooled: the paper's descriptor.

    Each frame is resized so that its shorter side is ``short_side`` pixels (aspect kept),
    normalised with ImageNet mean/std and run through the ResNet50 trunk to its last conv map
    ``(2048, h, w)`` (stride 32). Every R-MAC region (:func:`rmac_regions`, ``levels`` scales plus
    the whole map) is max-pooled and L2-normalised.

    Output per frame: ``(R, 2048) float32``, rows of unit L2 norm; R depends only on the frame's
    aspect ratio (27 for 16:9 at the default size: a 7 x 13 map).
    """

    name = "rmac"
    # NOT calibrated: no trained ResNet50 weights are available to this project's machines, so
    # this value is an unmeasured starting point. Measure the within-shot and cut distances on
    # real weights and set SegmentSettings.cut_threshold (or this attribute) from them.
    cut_threshold = 0.3

    def __init__(
        self,
        weights_path: Path,
        *,
        device: str = "cpu",
        short_side: int = 224,
        levels: int = 3,
        batch_size: int = 8,
    ) -> None:
        model = load_resnet50(weights_path)
        # Everything up to and including layer4: drop global pooling and the classifier.
        self.trunk = torch.nn.Sequential(*list(model.children())[:-2]).to(device).eval()
        self.device = torch.device(device)
        self.short_side = short_side
        self.levels = levels
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = self.short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(rgb, size, interpolation=interpolation)

    @torch.inference_mode()
    def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        resized = [self._resize(_check_frame(f)) for f in frames]
        out: list[np.ndarray | None] = [None] * len(resized)
        # Batch frames of equal size only (a video's frames all have one size).
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(resized):
            by_size.setdefault(img.shape[:2], []).append(i)
        for indices in by_size.values():
            for k in range(0, len(indices), self.batch_size):
                chunk = indices[k : k + self.batch_size]
                batch = torch.from_numpy(np.stack([resized[i] for i in chunk])).to(self.device)
                x = batch.permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - self._mean) / self._std
                fmap = self.trunk(x)  # (B, 2048, h, w)
                pooled = self._pool(fmap)  # (B, R, 2048)
                for i, desc in zip(chunk, pooled, strict=True):
                    out[i] = desc
        return [d for d in out if d is not None]

    def _pool(self, fmap: torch.Tensor) -> list[np.ndarray]:
        h, w = fmap.shape[-2:]
        regions = rmac_regions(h, w, self.levels)
        pooled = torch.stack(
            [fmap[:, :, y0:y1, x0:x1].amax(dim=(-2, -1)) for (y0, x0, y1, x1) in regions], dim=1
        )  # (B, R, 2048)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1, eps=1e-6)
        return [p.float().cpu().numpy() for p in pooled]


def build_extractor(
    method: Literal["auto", "rmac", "histogram"] = "auto",
    weights_path: Path | None = None,
    *,
    device: str = "cpu",
) -> RegionFeatureExtractor:
    """The region descriptor for ``method``.

    ``auto`` is ``rmac`` when ``weights_path`` names an existing file, else ``histogram``.
    ``rmac`` with a missing or bad file raises :class:`CheckpointError` (asked for explicitly, a
    silent fallback would misreport the method).
    """
    if method == "auto":
        method = (
            "rmac" if weights_path is not None and Path(weights_path).is_file() else "histogram"
        )
    if method == "histogram":
        return ColourHistogramRegions()
    if method == "rmac":
        if weights_path is None:
            raise CheckpointError("method 'rmac' needs a ResNet50 weights file; none was given")
        return ResNetRMAC(Path(weights_path), device=device)
    raise ValueError(f"unknown segmentation method {method!r}")


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"empty frame {frame.shape}")
    return frame
