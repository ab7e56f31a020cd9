"""Pictures a journalist can check by eye (paper 3.3 "gallery plots", 5.2 "Shot"/"Keyframe" views).

Per shot: a collage of its sampled keyframes with every kept face boxed in a colour that encodes
its score, plus a legend. Per track: a collage of its face crops and one keyframe with the box.
For an image: the image, the image with its faces boxed, and each face's crop.
:func:`write_shot_pictures` and :func:`write_image_pictures` store them in an
:class:`~pipeline.artefacts.ArtefactSink` and record their keys in the result.
Colours come from a blue-to-vermillion map built on the Okabe-Ito palette, which stays
distinguishable under the common colour-vision deficiencies (and in greyscale, by lightness).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.artefacts import ArtefactSink
from pipeline.result import ShotResult
from pipeline.sampling import ShotSamples, spread

# Okabe-Ito blue, a light neutral, Okabe-Ito vermillion: score 0, 0.5, 1.
_STOPS = (
    (0.0, (0, 114, 178)),
    (0.5, (240, 228, 66)),
    (1.0, (213, 94, 0)),
)
JPEG_QUALITY = 88


def score_colour(score: float) -> tuple[int, int, int]:
    """RGB for a probability in [0, 1] (clamped)."""
    s = min(max(float(score), 0.0), 1.0)
    for (s0, c0), (s1, c1) in itertools.pairwise(_STOPS):
        if s <= s1:
            t = (s - s0) / (s1 - s0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return _STOPS[-1][1]


def encode_jpeg(image: Image.Image | np.ndarray) -> bytes:
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def thumbnail(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale ``(H, W, 3)`` uint8 to a longer side of at most ``max_side``; returns the scale."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return frame, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR)), scale


@dataclass(frozen=True)
class BoxedFace:
    box: tuple[float, float, float, float]
    score: float


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_faces(frame: np.ndarray, faces: Sequence[BoxedFace], scale: float = 1.0) -> Image.Image:
    """The frame with each face boxed and labelled with its score, border colour by score."""
    img = Image.fromarray(frame).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 120))
    font = _font(max(10, round(min(img.size) / 22)))
    for face in faces:
        x1, y1, x2, y2 = (v * scale for v in face.box)
        colour = score_colour(face.score)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{face.score:.2f}"
        tb = draw.textbbox((x1, y1), text, font=font)
        th = tb[3] - tb[1] + 4
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle((x1, ty, x1 + tb[2] - tb[0] + 6, ty + th), fill=colour)
        draw.text((x1 + 3, ty + 1), text, fill=(0, 0, 0), font=font)
    return img


def legend(width: int, height: int = 28) -> Image.Image:
    """A horizontal colour bar from 0 (real) to 1 (manipulated)."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    bar_h = height // 2
    margin = 8
    span = max(1, width - 2 * margin)
    for x in range(span):
        draw.line((margin + x, 2, margin + x, 2 + bar_h), fill=score_colour(x / (span - 1 or 1)))
    font = _font(max(9, height // 3))
    draw.text((margin, bar_h + 3), "0 real", fill=(0, 0, 0), font=font)
    label = "1 manipulated"
    tw = draw.textlength(label, font=font)
    draw.text((width - margin - tw, bar_h + 3), label, fill=(0, 0, 0), font=font)
    mid = "0.5"
    draw.text(
        (width / 2 - draw.textlength(mid, font=font) / 2, bar_h + 3), mid, fill=(0, 0, 0), font=font
    )
    return img


def grid(tiles: Sequence[Image.Image], tile_w: int, tile_h: int, with_legend: bool) -> Image.Image:
    """Tiles (letterboxed to ``tile_w`` x ``tile_h``) on a near-square grid, legend underneath."""
    n = max(1, len(tiles))
    cols = math.ceil(math.sqrt(n * tile_h / tile_w)) if n > 1 else 1
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    gap = 4
    legend_h = 30 if with_legend else 0
    width = cols * tile_w + (cols + 1) * gap
    out = Image.new("RGB", (width, rows * tile_h + (rows + 1) * gap + legend_h), (32, 32, 32))
    for i, tile in enumerate(tiles):
        t = tile.copy()
        t.thumbnail((tile_w, tile_h))
        r, c = divmod(i, cols)
        x = gap + c * (tile_w + gap) + (tile_w - t.width) // 2
        y = gap + r * (tile_h + gap) + (tile_h - t.height) // 2
        out.paste(t, (x, y))
    if with_legend:
        out.paste(legend(width, legend_h), (0, out.height - legend_h))
    return out


def shot_gallery(frames: Sequence[tuple[np.ndarray, Sequence[BoxedFace], float]]) -> bytes:
    """JPEG collage of a shot's keyframes, each ``(thumbnail, faces in frame pixels, scale)``."""
    tiles = [draw_faces(img, faces, scale) for img, faces, scale in frames]
    if not tiles:
        raise ValueError("a gallery needs at least one frame")
    tile_w = tiles[0].width
    tile_h = tiles[0].height
    return encode_jpeg(grid(tiles, tile_w, tile_h, with_legend=True))


def track_collage(crops: Sequence[np.ndarray], scores: Sequence[float], tile: int = 112) -> bytes:
    """JPEG collage of a track's face crops, each framed in its score's colour."""
    tiles = []
    for crop, score in zip(crops, scores, strict=True):
        img = Image.fromarray(crop).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
        framed = Image.new("RGB", (tile + 8, tile + 8), score_colour(score))
        framed.paste(img, (4, 4))
        tiles.append(framed)
    return encode_jpeg(grid(tiles, tile + 8, tile + 8, with_legend=True))


# --- the pictures of one analysis, written to a sink -----------------------------------------


def write_image_pictures(
    sink: ArtefactSink,
    prefix: str,
    image: np.ndarray,
    shot: ShotResult,
    crops: Sequence[np.ndarray],
    max_side: int,
) -> None:
    """An image's view, the view with its faces boxed, and one crop per face (``shot.clusters``)."""
    view, scale = thumbnail(image, max(max_side, 1280))
    shot.thumbnail = f"{prefix}image.jpg"
    sink.put_bytes(shot.thumbnail, encode_jpeg(view), "image/jpeg")
    boxed = [BoxedFace(c.faces[0].box, c.score) for c in shot.clusters]
    shot.gallery = f"{prefix}image_boxes.jpg"
    sink.put_bytes(shot.gallery, encode_jpeg(draw_faces(view, boxed, scale)), "image/jpeg")
    for cluster, face_crop in zip(shot.clusters, crops, strict=True):
        cluster.collage = f"{prefix}faces/{cluster.id:03d}.jpg"
        sink.put_bytes(cluster.collage, encode_jpeg(face_crop), "image/jpeg")
        cluster.keyframe = shot.gallery
        cluster.keyframe_time_s = 0.0


def write_shot_pictures(
    sink: ArtefactSink,
    prefix: str,
    samples: ShotSamples,
    clusters: list[list[int]],
    result: ShotResult,
    score_of: dict[int, float],
    max_tiles: int,
    collage_max_tiles: int,
) -> None:
    """A shot's gallery and thumbnail, and each track's collage and keyframe.

    ``clusters`` index ``samples.faces``, one list per track of ``result.clusters`` (in order);
    ``score_of`` maps those indices to face scores. At most ``max_tiles`` keyframes go into the
    gallery and ``collage_max_tiles`` crops into a collage, spread over the shot or the track.
    """
    base = f"{prefix}shots/{result.index:04d}"
    kept_by_frame: dict[int, list[BoxedFace]] = {}
    for cluster in clusters:
        for i in cluster:
            f = samples.faces[i]
            kept_by_frame.setdefault(f.frame_pos, []).append(
                BoxedFace(f.detection.box, score_of[i])
            )
    frames = samples.frames
    tiles = [
        (frames[p].thumbnail, kept_by_frame.get(p, []), frames[p].scale)
        for p in spread(len(frames), max_tiles)
    ]
    result.gallery = f"{base}/gallery.jpg"
    sink.put_bytes(result.gallery, shot_gallery(tiles), "image/jpeg")
    middle = frames[len(frames) // 2]
    result.thumbnail = f"{base}/thumbnail.jpg"
    sink.put_bytes(result.thumbnail, encode_jpeg(middle.thumbnail), "image/jpeg")
    for cid, (cluster, cres) in enumerate(zip(clusters, result.clusters, strict=True)):
        picks = [cluster[p] for p in spread(len(cluster), collage_max_tiles)]
        cres.collage = f"{base}/track{cid:02d}_collage.jpg"
        collage = track_collage(
            [samples.faces[i].crop for i in picks], [score_of[i] for i in picks]
        )
        sink.put_bytes(cres.collage, collage, "image/jpeg")
        best = max(cluster, key=lambda i: samples.faces[i].detection.confidence)
        face = samples.faces[best]
        keyframe = frames[face.frame_pos]
        cres.keyframe = f"{base}/track{cid:02d}_keyframe.jpg"
        cres.keyframe_time_s = round(face.time_s, 4)
        image = draw_faces(
            keyframe.thumbnail, [BoxedFace(face.detection.box, score_of[best])], keyframe.scale
        )
        sink.put_bytes(cres.keyframe, encode_jpeg(image), "image/jpeg")
