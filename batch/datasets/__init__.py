"""Dataset readers: each benchmark's official folder layout -> rows of :class:`VideoRow`.

One reader per dataset of paper section 4.1 (FaceForensics++: :mod:`.ffpp`, Celeb-DF-v2:
:mod:`.celebdf`, WildDeepfake: :mod:`.wdf`) plus DFDC (the training data of models 1-4, paper
3.2.2: :mod:`.dfdc`) and a plain CSV manifest for anything else (:mod:`.csv_manifest`). Readers
only list files and parse the official label/split files; they never decode media.
:func:`read_dataset` (:mod:`.read`) picks the reader by name and sorts the rows by ``video_id``
(:mod:`.rows`); :mod:`.layout` holds what the layouts look like and the errors when a folder does
not, :mod:`.face_sequences` the streaming of WildDeepfake's face archives.
"""

from batch.datasets.celebdf import (
    CELEBDF_FOLDERS,
    CELEBDF_TEST_LIST,
    parse_celebdf_test_list,
    read_celebdf,
)
from batch.datasets.csv_manifest import CSV_OPTIONAL, CSV_REQUIRED, read_csv_manifest
from batch.datasets.dfdc import read_dfdc
from batch.datasets.face_sequences import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, iter_face_sequence
from batch.datasets.ffpp import (
    FFPP_COMPRESSIONS,
    FFPP_MANIPULATIONS,
    FFPP_PAPER_MANIPULATIONS,
    FFPP_SPLIT_FILES,
    parse_ffpp_splits,
    read_ffpp,
)
from batch.datasets.read import read_dataset
from batch.datasets.rows import (
    KINDS,
    ORIGINAL,
    SPLITS,
    UNSPECIFIED,
    DatasetName,
    OnMissing,
    RowKind,
    SplitName,
    VideoRow,
    summarize,
)
from batch.datasets.wdf import WDF_MANIPULATION, read_wdf

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CELEBDF_FOLDERS",
    "CELEBDF_TEST_LIST",
    "CSV_OPTIONAL",
    "CSV_REQUIRED",
    "FFPP_COMPRESSIONS",
    "FFPP_MANIPULATIONS",
    "FFPP_PAPER_MANIPULATIONS",
    "FFPP_SPLIT_FILES",
    "IMAGE_SUFFIXES",
    "KINDS",
    "ORIGINAL",
    "SPLITS",
    "UNSPECIFIED",
    "WDF_MANIPULATION",
    "DatasetName",
    "OnMissing",
    "RowKind",
    "SplitName",
    "VideoRow",
    "iter_face_sequence",
    "parse_celebdf_test_list",
    "parse_ffpp_splits",
    "read_celebdf",
    "read_csv_manifest",
    "read_dataset",
    "read_dfdc",
    "read_ffpp",
    "read_wdf",
    "summarize",
]
