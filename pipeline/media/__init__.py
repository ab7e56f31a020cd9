"""What a downloaded file is, and its pixels: probing, image loading, lazy video sampling.

Paper section 3.1, "Media Type": an image goes straight to face detection and inference, a video
goes through every stage. The type is decided from the file's *bytes* (magic numbers), never from
its name, because names of downloaded files come from URLs and lie.

Only containers recognised here are ever handed to a decoder. That is a safety rule as much as a
convenience: FFmpeg (under OpenCV) also opens text playlists (HLS, concat lists) that make it fetch
other URLs, so "let FFmpeg guess" would reopen the SSRF hole that ``pipeline.download`` closes.

Decoding choices, measured on ``shared/data`` (2-core laptop CPU, OpenCV 5.0 with its FFmpeg):

* Videos are decoded front to back, with ``grab()`` for every frame and ``retrieve()`` (the
  YUV -> BGR conversion, ~2.4 ms at 1080p) only for frames that may be wanted. Seeking does not pay
  at the paper's 1 frame per second: the keyframe interval of every sample video is 2-10 s, so any
  seek still decodes from the previous keyframe, and OpenCV's seek re-decodes even more (10 seeks
  in a 10 s 1080p clip took 4.9 s against 1.5 s for decoding it all). Across gaps longer than a
  typical keyframe interval (``DEFAULT_SEEK_GAP_S``) it does pay, 3-6x on sparse samples of the
  sample videos, with identical frames. PyAV was no faster at full decoding (1.26 s vs 0.91 s on
  the same clip), so it is not a dependency.
* Frame times come from the decoder (``CAP_PROP_POS_MSEC``, the frame's presentation time), not
  from ``index / fps``, because containers lie about fps and frame counts and GIFs have per-frame
  delays.
* Rotation: OpenCV's FFmpeg backend reads the container's display matrix
  (``CAP_PROP_ORIENTATION_META``) and, with ``CAP_PROP_ORIENTATION_AUTO`` on, returns frames already
  rotated and reports the rotated width and height. We switch it on explicitly (defaults have
  changed between OpenCV releases) and never rotate again ourselves.
* Animated GIFs (more than one frame) are videos, decoded by FFmpeg with their real frame delays;
  a still GIF is an image. Animated WebP and APNG are images (their first frame): FFmpeg cannot
  decode animated WebP, and both are rare for the footage this service checks.

Modules: :mod:`~pipeline.media.formats` (the format from the bytes, the pixel guard),
:mod:`~pipeline.media.images` (Pillow), :mod:`~pipeline.media.videos` (OpenCV/FFmpeg sampling)
and :mod:`~pipeline.media.probing` (:func:`probe`: what a file is, and that it decodes).
"""

from pipeline.media.formats import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, VIDEO_FORMATS, sniff_format
from pipeline.media.images import load_image
from pipeline.media.probing import MediaInfo, MediaKind, probe, sha256_file
from pipeline.media.videos import DEFAULT_SEEK_GAP_S, Frame, iter_frames, sample_times

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SEEK_GAP_S",
    "IMAGE_FORMATS",
    "VIDEO_FORMATS",
    "Frame",
    "MediaInfo",
    "MediaKind",
    "iter_frames",
    "load_image",
    "probe",
    "sample_times",
    "sha256_file",
    "sniff_format",
]
