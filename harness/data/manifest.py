"""The manifest: one row per image, the single shape every dataset layout is read into.

Columns: image_id (str), person_id (str), age (int), age_group (int 0..9), split (retain, forget,
val, test; "train"/"" before the forget set is drawn), source (the file it came from, "" when
generated). Row i describes images[i].
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.errors import DataError

COLUMNS = ("image_id", "person_id", "age", "age_group", "split", "source")
SPLITS = ("retain", "forget", "val", "test")
NUM_AGE_GROUPS = 10


@dataclass(frozen=True)
class LayoutData:
    """What a layout reader returns: the manifest (its split column may be preset), the images."""

    manifest: pd.DataFrame
    images: np.ndarray  # float32 [n, C, H, W]
    description: str
    num_classes: int = NUM_AGE_GROUPS
    fixed_split: bool = False  # the layout fixes train/val/test (and maybe forget): keep the split column
    test_is_val: bool = False  # no test set of its own: the val rows double as the test set


def age_groups(ages: Sequence[int] | np.ndarray, *, bins: int = NUM_AGE_GROUPS) -> np.ndarray:
    """The organizers' age groups: digitize(age, linspace(min, max + 1, bins + 1)) - 1, over these ages."""
    ages = np.asarray(ages)
    if ages.size == 0:
        return ages.astype(np.int64)
    edges = np.linspace(np.min(ages), np.max(ages) + 1, bins + 1)
    return (np.digitize(ages, edges) - 1).astype(np.int64)


def make_manifest(
    image_id: Sequence[str],
    person_id: Sequence[str],
    age: Sequence[int],
    age_group: Sequence[int],
    *,
    source: Sequence[str] | None = None,
    split: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A manifest with the canonical columns and dtypes (str ids, int64 ages and groups)."""
    n = len(image_id)
    return pd.DataFrame(
        {
            "image_id": np.asarray(image_id, dtype=str).astype(object),
            "person_id": np.asarray(person_id, dtype=str).astype(object),
            "age": np.asarray(age, dtype=np.int64),
            "age_group": np.asarray(age_group, dtype=np.int64),
            "split": np.asarray(split if split is not None else [""] * n, dtype=str).astype(object),
            "source": np.asarray(source if source is not None else [""] * n, dtype=str).astype(object),
        }
    )


def validate_manifest(manifest: pd.DataFrame, *, images: np.ndarray | None = None, num_classes: int, where: str) -> None:
    """Columns present, ids unique, labels in range, one image per row, no image in two splits;
    a DataError otherwise."""
    missing = [c for c in COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{where}: manifest lacks columns {missing}; a manifest needs {', '.join(COLUMNS)}")
    if len(manifest) == 0:
        raise DataError(f"{where}: the dataset has no images; check the path and the layout")
    dup = manifest["image_id"][manifest["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{where}: image_id must be unique, {dup.iloc[0]!r} appears more than once; fix the manifest")
    groups = manifest["age_group"].to_numpy()
    bad = (groups < 0) | (groups >= num_classes)
    if bad.any():
        raise DataError(
            f"{where}: age_group must be in 0..{num_classes - 1}, got {int(groups[bad][0])} for image "
            f"{manifest['image_id'].iloc[int(np.argmax(bad))]!r}; fix the labels or the number of classes"
        )
    if images is not None:
        if images.ndim != 4 or images.dtype != np.float32:
            raise DataError(f"{where}: images must be float32 [n, C, H, W], got {images.dtype} {images.shape}")
        if len(images) != len(manifest):
            raise DataError(f"{where}: {len(images)} images for {len(manifest)} manifest rows; they must match")
        check_no_image_in_two_splits(manifest, images, where=where)


def image_key(image: np.ndarray) -> bytes:
    """A digest of one image's pixels: equal keys, the same image."""
    return hashlib.sha1(np.ascontiguousarray(image), usedforsecurity=False).digest()


def check_no_image_in_two_splits(manifest: pd.DataFrame, images: np.ndarray, *, where: str) -> None:
    """The same pixels in two splits (a photo in forget and retain, or in retain and test) make
    the scores meaningless; a DataError naming the files. Copies within one split are allowed."""
    keys = [image_key(image) for image in images]
    rows = pd.DataFrame({"key": keys, "split": manifest["split"].to_numpy()})
    n_splits = rows.groupby("key", sort=False)["split"].nunique()
    shared = n_splits[n_splits > 1]
    if shared.empty:
        return
    first = np.flatnonzero(rows["key"].to_numpy() == shared.index[0])
    a = first[0]
    b = next(i for i in first if rows["split"].iat[i] != rows["split"].iat[a])

    sources = manifest["source"]
    shared_files = set(sources[sources.duplicated()])  # a batch file holding many images (CIFAR-10)

    def name(i: int) -> str:
        source, image_id = sources.iat[i], manifest["image_id"].iat[i]
        return f"{image_id} in {source}" if source in shared_files and source else source or image_id

    more = f" ({len(shared)} images are in more than one split)" if len(shared) > 1 else ""
    raise DataError(
        f"{where}: the same image is in two splits: {name(a)} ({rows['split'].iat[a]}) and {name(b)} "
        f"({rows['split'].iat[b]}){more}; remove the duplicate files from the dataset"
    )


def manifest_csv(manifest: pd.DataFrame) -> bytes:
    """The manifest's canonical CSV bytes (columns in order), for fingerprints and records."""
    return manifest.loc[:, list(COLUMNS)].to_csv(index=False, lineterminator="\n").encode()


def fingerprint(images: np.ndarray, manifest: pd.DataFrame) -> str:
    """sha256 over the image bytes and the manifest CSV: what cache keys depend on."""
    h = hashlib.sha256()
    h.update(str((images.dtype.str, images.shape)).encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    h.update(manifest_csv(manifest))
    return h.hexdigest()


def read_images(paths: Sequence[str | Path], *, size: int | None, layout: str) -> np.ndarray:
    """Decode images as the organizers did (torchvision read_image, T.Resize), raw 0-255 float32.

    `size` None keeps the files' size (they must all agree). Decoding runs on a few threads.
    """
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import functional as F  # T.Resize's kernel, as surf.py (v2 rounds differently)

    def load(path: str | Path) -> torch.Tensor:
        try:
            data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
            image = decode_image(data, mode=ImageReadMode.RGB)
        except FileNotFoundError:
            raise DataError(f"layout {layout!r}: image file {path} is missing; check the dataset's path") from None
        except RuntimeError as exc:
            raise DataError(f"layout {layout!r}: cannot decode image {path} ({str(exc).splitlines()[0]})") from None
        if size is not None and tuple(image.shape[-2:]) != (size, size):
            image = F.resize(image, [size, size], antialias=True)
        return image

    if not paths:
        return np.zeros((0, 3, size or 0, size or 0), np.float32)
    workers = min(8, os.cpu_count() or 1)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; they are what surf.py used
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        decoded = list(pool.map(load, paths))
    shapes = {tuple(t.shape) for t in decoded}
    if len(shapes) > 1:
        raise DataError(
            f"layout {layout!r}: images differ in size ({sorted(shapes)[:2]}...); set the image_size option to resize them"
        )
    return torch.stack(decoded).to(torch.float32).numpy()
