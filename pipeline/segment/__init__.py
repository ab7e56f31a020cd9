"""Shot boundaries: region descriptors per sampled frame, Chamfer similarity, peaks of distance.

Paper section 3.1 (Video Segmentation), following ViSiL [35]: one frame per second, region-level
features from a ResNet50 with R-MAC pooling, Chamfer similarity between the region sets of
consecutive frames, peaks of the distance curve are shot transitions, shots at least 1.5 s long.

Two region descriptors implement :class:`RegionFeatureExtractor`:

* :class:`ResNetRMAC`, the paper's, needs ResNet50 weights from a local file (never downloaded);
* :class:`ColourHistogramRegions` needs no weights: Hellinger-normalised HSV histograms over a
  multi-scale region grid. It is what runs when no ResNet50 weights are installed, and the result
  records which one ran (the extractor's ``name``).

Everything downstream of the descriptor (Chamfer similarity, peak picking, the 1.5 s rule) is the
same for both. Frames are never kept: :func:`segment` consumes an iterator of ``(time_s, frame)``
and keeps only the small per-frame descriptors, so memory does not grow with the video's
resolution.

Modules: :mod:`~pipeline.segment.descriptors` (the two region descriptors) and
:mod:`~pipeline.segment.shots` (similarity, cuts, shots, the whole step).
"""

from pipeline.segment.descriptors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColourHistogramRegions,
    RegionFeatureExtractor,
    ResNetRMAC,
    build_extractor,
    grid_regions,
    load_resnet50,
    rmac_regions,
)
from pipeline.segment.shots import (
    Segmentation,
    SegmentSettings,
    Shot,
    TimedFrame,
    chamfer_similarity,
    detect_cuts,
    distance_curve,
    segment,
    segment_features,
    shots_from_cuts,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColourHistogramRegions",
    "RegionFeatureExtractor",
    "ResNetRMAC",
    "SegmentSettings",
    "Segmentation",
    "Shot",
    "TimedFrame",
    "build_extractor",
    "chamfer_similarity",
    "detect_cuts",
    "distance_curve",
    "grid_regions",
    "load_resnet50",
    "rmac_regions",
    "segment",
    "segment_features",
    "shots_from_cuts",
]
