"""Dataset layouts: each a registered reader that turns local files (or the generator) into a manifest.

Readers never download. A missing folder or file is a one-line DataError that names the layout
and what it expected. Images come back as raw 0-255 float32 [n, 3, S, S] (the organizers fed
unnormalised pixels to their ResNet-18), except CIFAR-10, normalised as the starting kit did.
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.data.manifest import LayoutData, age_groups, image_key, make_manifest, read_images
from harness.data.synthetic import SyntheticOptions, generate_faces
from harness.errors import DataError, HarnessError
from harness.registry import Registry


@dataclass(frozen=True)
class Layout:
    """A reader and the options it accepts (with their defaults)."""

    name: str
    read: Callable[..., LayoutData]  # read(root: Path | None, **options)
    options: dict[str, Any]
    needs_path: bool
    expects: str  # what the folder must hold, for messages


LAYOUTS: Registry[Layout] = Registry("layout")


def register_layout(name: str, *, options: dict[str, Any], needs_path: bool = True, expects: str = ""):
    def decorator(read: Callable[..., LayoutData]) -> Callable[..., LayoutData]:
        LAYOUTS.add(name, Layout(name=name, read=read, options=options, needs_path=needs_path, expects=expects))
        return read

    return decorator


def read_layout(name: str, path: str | Path | None, options: dict[str, Any] | None = None) -> LayoutData:
    """Read dataset `name` from `path` with layout-specific `options` (unknown options are errors)."""
    try:
        layout = LAYOUTS.get(name)
    except HarnessError as exc:
        raise DataError(f"task.dataset: {exc}") from None
    options = dict(options or {})
    unknown = sorted(set(options) - set(layout.options))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(layout.options), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        raise DataError(
            f"unknown option {unknown[0]!r} for layout {name!r}{hint} valid options: {', '.join(sorted(layout.options))}"
        )
    root = None
    if layout.needs_path:
        if path is None:
            raise DataError(f"layout {name!r} needs task.path: a local folder holding {layout.expects}")
        root = Path(path).expanduser()
        if not root.exists():
            raise DataError(f"layout {name!r}: path {root} does not exist; it must hold {layout.expects}")
    return layout.read(root, **{**layout.options, **options})


def _require(root: Path, relative: str, *, layout: str) -> Path:
    target = root / relative
    if not target.exists():
        expects = LAYOUTS.get(layout).expects
        raise DataError(f"layout {layout!r} expects {expects} under {root}; missing {target}")
    return target


def _check_size(image_size: Any, *, layout: str) -> int | None:
    if image_size is None or (isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 4):
        return image_size
    raise DataError(f"layout {layout!r}: option image_size must be an integer >= 4 (or null to keep), got {image_size!r}")


# --- synthetic faces -------------------------------------------------------------------------


@register_layout("synthetic-faces", options=asdict(SyntheticOptions()), needs_path=False, expects="nothing (generated)")
def read_synthetic(root: Path | None, **options: Any) -> LayoutData:
    """The embedded task: procedural faces with ages, from a seed."""
    opts = SyntheticOptions.from_dict(options)
    faces = generate_faces(opts)
    persons = np.char.mod("p%04d", faces.person)
    image_ids = np.char.add(np.char.add(persons, "-"), np.char.mod("%02d", faces.index))
    manifest = make_manifest(image_ids, persons, faces.age, age_groups(faces.age))
    lo, hi = opts.images_per_person
    description = (
        f"synthetic faces: {opts.n_persons} persons x {lo}-{hi} images ({len(manifest)}), "
        f"{opts.image_size}x{opts.image_size}, age_cue {opts.age_cue:g}, age_var {opts.age_var:g}, "
        f"noise {opts.noise:g}, seed {opts.seed}"
    )
    return LayoutData(manifest=manifest, images=faces.images, description=description)


# --- Kaggle competition layout ---------------------------------------------------------------

_KAGGLE_FILES = (("retain", "retain.csv"), ("forget", "forget.csv"), ("val", "validation.csv"))
_KAGGLE_COLUMNS = ("image_id", "person_id", "age", "age_group")


@register_layout(
    "kaggle",
    options={"image_size": 32},
    expects="retain.csv, forget.csv, validation.csv (optionally test.csv) and images/",
)
def read_kaggle(root: Path, *, image_size: int | None) -> LayoutData:
    """The Kaggle competition's files; rows sorted by image path within each file, as its notebook did.

    Image `a-b` lives at images/a/b.png (the competition's scheme), else images/<image_id>[.png|.jpg].
    Without test.csv the validation rows double as the test set (said in the description).
    """
    size = _check_size(image_size, layout="kaggle")
    files = list(_KAGGLE_FILES)
    has_test = (root / "test.csv").exists()
    if has_test:
        files.append(("test", "test.csv"))
    images_dir = _require(root, "images", layout="kaggle")
    frames = []
    for split, name in files:
        frame = _read_csv(_require(root, name, layout="kaggle"), columns=_KAGGLE_COLUMNS, layout="kaggle")
        frame["source"] = [_kaggle_image_path(images_dir, str(i)) for i in frame["image_id"]]
        frame = frame.sort_values("source", kind="stable")
        frame["split"] = split
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    manifest = make_manifest(
        table["image_id"].astype(str), table["person_id"].astype(str), table["age"], table["age_group"],
        source=[str(Path(s).relative_to(root)) for s in table["source"]], split=table["split"],
    )
    images = read_images(list(table["source"]), size=size, layout="kaggle")
    note = "" if has_test else "; no test.csv: the validation set is used as the test set"
    return LayoutData(
        manifest=manifest,
        images=images,
        description=f"Kaggle layout at {root}: {len(manifest)} images{note}",
        fixed_split=True,
        test_is_val=not has_test,
    )


def _kaggle_image_path(images_dir: Path, image_id: str) -> str:
    candidates = []
    if "-" in image_id:
        head, tail = image_id.split("-", 1)
        candidates.append(images_dir / head / f"{tail}.png")
    candidates += [images_dir / image_id] + [images_dir / f"{image_id}{ext}" for ext in (".png", ".jpg", ".jpeg")]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"layout 'kaggle' expects the image of {image_id!r} under {images_dir}; missing {candidates[0]}")


def _read_csv(path: Path, *, columns: tuple[str, ...], layout: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "person_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"layout {layout!r}: cannot read {path} as CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"layout {layout!r}: {path} lacks columns {missing}; it needs {', '.join(columns)}, has {', '.join(map(str, frame.columns))}"
        )
    for column in ("age", "age_group"):
        if column in columns and not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"layout {layout!r}: column {column!r} of {path} must hold integers, got {frame[column].dtype}")
    return frame


# --- CASIA-SURF, as the organizers' surf.py reads it -----------------------------------------


@register_layout(
    "casia-surf",
    options={"image_size": 32, "shuffle_seed": 43},
    expects="Age_Gender.txt and WBackground/*/<person>/real.rssdk/color/*.jpg",
)
def read_casia_surf(root: Path, *, image_size: int | None, shuffle_seed: int) -> LayoutData:
    """google-deepmind/unlearning_evaluation surf.py: person folders in sorted glob order, images
    resized to 32x32 raw 0-255, examples shuffled by random.Random(43), then 80/10/10 train/val/test.

    Rows come in the shuffled order, so each split's rows are in the organizers' order. Their
    forget set (LeavePGroupsOut(15), first split) is forget `first_k: true, count: 15`.
    """
    size = _check_size(image_size, layout="casia-surf")
    labels_path = _require(root, "Age_Gender.txt", layout="casia-surf")
    ids, ages = _read_age_gender(labels_path)
    groups = dict(zip(ids, age_groups(ages).tolist()))
    age_of = dict(zip(ids, ages.tolist()))
    person_dirs = sorted(p for p in _require(root, "WBackground", layout="casia-surf").glob("*/*") if p.is_dir())
    paths, persons = [], []
    for person_dir in person_dirs:
        person = person_dir.name
        files = sorted((person_dir / "real.rssdk" / "color").glob("*.jpg"))
        if files and person not in groups:
            raise DataError(
                f"layout 'casia-surf': person folder {person_dir} has no line in {labels_path}; add its age or remove the folder"
            )
        paths += files
        persons += [person] * len(files)
    if not paths:
        raise DataError(f"layout 'casia-surf' expects {LAYOUTS.get('casia-surf').expects} under {root}; found no such .jpg")
    order = list(range(len(paths)))
    random.Random(shuffle_seed).shuffle(order)
    n = len(order)
    split = np.full(n, "test", dtype=object)
    split[: int(0.8 * n)] = "train"
    split[int(0.8 * n) : int(0.9 * n)] = "val"
    paths = [paths[i] for i in order]
    persons = [persons[i] for i in order]
    manifest = make_manifest(
        [str(p.relative_to(root)) for p in paths], persons, [age_of[p] for p in persons], [groups[p] for p in persons],
        source=[str(p.relative_to(root)) for p in paths], split=split,
    )
    images = read_images(paths, size=size, layout="casia-surf")
    return LayoutData(
        manifest=manifest,
        images=images,
        description=(
            f"CASIA-SURF at {root}: {n} images of {len(set(persons))} persons, "
            f"80/10/10 after random.Random({shuffle_seed}).shuffle as the organizers' surf.py"
        ),
        fixed_split=True,
    )


def _read_age_gender(path: Path) -> tuple[list[str], np.ndarray]:
    ids, ages = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"layout 'casia-surf': {path} line {number} must read '<id> <age> <gender>', got {line!r}")
        ids.append(parts[0])
        ages.append(int(parts[1]))
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"layout 'casia-surf': person {dup!r} appears twice in {path}; each id must be listed once")
    return ids, np.asarray(ages, dtype=np.int64)


# --- UTKFace ---------------------------------------------------------------------------------

_UTK_NAME = re.compile(r"^(\d+)_(\d+)_")


@register_layout(
    "utkface",
    options={"image_size": 32, "person_map": None},
    expects="UTKFace images named <age>_<gender>_<race>_<date>.jpg",
)
def read_utkface(root: Path, *, image_size: int | None, person_map: str | None) -> LayoutData:
    """UTKFace file names carry the age; each image is its own person unless `person_map` (a CSV
    with columns image_id, person_id; image_id is the path relative to the root) groups them."""
    size = _check_size(image_size, layout="utkface")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
    matched = [(p, _UTK_NAME.match(p.name)) for p in files]
    usable = [(p, int(m.group(1))) for p, m in matched if m]
    skipped = len(files) - len(usable)
    usable, copies = _one_file_per_photo(usable, root=root)
    if not usable:
        raise DataError(f"layout 'utkface' expects images named <age>_<gender>_<race>_<date>.jpg under {root}; found none")
    paths = [p for p, _ in usable]
    image_ids = [p.relative_to(root).as_posix() for p in paths]
    ages = np.asarray([a for _, a in usable], dtype=np.int64)
    persons = list(image_ids)
    if person_map is not None:
        map_path = Path(person_map) if Path(person_map).is_absolute() else root / person_map
        if not map_path.is_file():
            raise DataError(f"layout 'utkface' expects the person_map CSV {map_path}; missing {map_path}")
        mapping = _read_csv(map_path, columns=("image_id", "person_id"), layout="utkface")
        lookup = dict(zip(mapping["image_id"].astype(str), mapping["person_id"].astype(str)))
        persons = [lookup.get(i, i) for i in image_ids]
    manifest = make_manifest(image_ids, persons, ages, age_groups(ages), source=image_ids)
    note = f"; skipped {skipped} files whose names carry no age" if skipped else ""
    if copies:
        kept, dropped = copies[0]
        note += f"; read {len(copies)} photos found in several folders once (e.g. {dropped} is {kept})"
    return LayoutData(
        manifest=manifest,
        images=read_images(paths, size=size, layout="utkface"),
        description=f"UTKFace at {root}: {len(manifest)} images, ages {ages.min()}-{ages.max()}{note}",
    )


def _one_file_per_photo(usable: list[tuple[Path, int]], *, root: Path) -> tuple[list[tuple[Path, int]], list[tuple[str, str]]]:
    """A UTKFace name (age_gender_race_datetime) identifies the photo: a download holding both
    UTKFace/ and crop_part1/ (or the in-the-wild parts) has it twice, in two crops or the same
    bytes, which would put one face in two splits. Keep the first copy in path order; return the
    (kept, dropped) pairs, relative to the root."""
    first: dict[str, Path] = {}
    kept, copies = [], []
    for path, age in usable:
        photo = path.name.split(".", 1)[0]
        if photo in first:
            copies.append((first[photo].relative_to(root).as_posix(), path.relative_to(root).as_posix()))
            continue
        first[photo] = path
        kept.append((path, age))
    return kept, copies


# --- CIFAR-10 in torchvision's on-disk format ------------------------------------------------

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the starting kit's normalisation
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")


@register_layout(
    "cifar10",
    options={"image_size": 32, "normalize": True, "verify_md5": True, "val_test_seed": 42},
    expects="cifar-10-batches-py/ (torchvision's CIFAR-10 files; never downloaded)",
)
def read_cifar10(root: Path, *, image_size: int | None, normalize: bool, verify_md5: bool, val_test_seed: int) -> LayoutData:
    """CIFAR-10 as the starting kit used it: the class is the label (age_group), each image its own
    person; train = the 50k training images, the 10k test images halved into test and val by
    random_split(..., [0.5, 0.5], generator=manual_seed(42)). The forget set comes from
    task.forget (an index file of train positions, like the kit's forget_idx.npy, or a fraction)."""
    import torch

    size = _check_size(image_size, layout="cifar10")
    if root.name == "cifar-10-batches-py":
        root = root.parent
    for name in _CIFAR_FILES:
        _require(root, f"cifar-10-batches-py/{name}", layout="cifar10")
    dataset_cls = _cifar10_class(verify_md5=verify_md5)
    try:
        train, held_out = (dataset_cls(str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError as exc:
        raise DataError(
            f"layout 'cifar10': {root / 'cifar-10-batches-py'} fails torchvision's checks ({exc}); "
            "restore the original files, or set option verify_md5: false for a modified copy"
        ) from None
    data = np.concatenate([train.data, held_out.data])  # uint8 NHWC
    labels = np.asarray(list(train.targets) + list(held_out.targets), dtype=np.int64)
    n_train = len(train.data)
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    if size is not None and size != images.shape[-1]:
        from torchvision.transforms import functional as F

        images = F.resize(images, [size, size], antialias=True)
    images = images.to(torch.float32)
    if normalize:
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        images = (images / 255.0 - mean) / std
    held = len(labels) - n_train
    generator = torch.Generator().manual_seed(val_test_seed)
    test_part, val_part = torch.utils.data.random_split(range(held), [0.5, 0.5], generator=generator)
    split = np.full(len(labels), "train", dtype=object)
    split[n_train + np.asarray(test_part.indices, dtype=np.int64)] = "test"
    split[n_train + np.asarray(val_part.indices, dtype=np.int64)] = "val"
    ids = [f"train-{i:05d}" for i in range(n_train)] + [f"test-{i:05d}" for i in range(held)]
    source = [f"cifar-10-batches-py/data_batch_{i // 10000 + 1}" for i in range(n_train)] + ["cifar-10-batches-py/test_batch"] * held
    manifest = make_manifest(ids, ids, labels, labels, source=source, split=split)
    images = images.numpy()
    # a held-out image identical to one in another split (train first) is dropped, so no image is in
    # two splits; the training rows, which the starting kit's forget_idx.npy indexes, all stay
    keep = _first_copy_per_split_change(images, split, protected=n_train)
    dropped = f"; dropped {int((~keep).sum())} held-out images identical to one in another split" if not keep.all() else ""
    scaling = "normalised as the starting kit" if normalize else "raw 0-255"
    return LayoutData(
        manifest=manifest.loc[keep].reset_index(drop=True),
        images=images[keep],
        description=f"CIFAR-10 at {root}: {n_train} train, {held} held out (halved into test and val), {scaling}{dropped}",
        fixed_split=True,
    )


def _first_copy_per_split_change(images: np.ndarray, split: np.ndarray, *, protected: int) -> np.ndarray:
    """Rows to keep: all of the first `protected`, and each later row unless the same pixels came
    earlier in another split."""
    seen: dict[bytes, str] = {}
    keep = np.ones(len(images), bool)
    for i, image in enumerate(images):
        key = image_key(image)
        first = seen.setdefault(key, split[i])
        keep[i] = i < protected or first == split[i]
    return keep


def _cifar10_class(*, verify_md5: bool):
    """torchvision's CIFAR10, or a subclass that skips the md5 checks (the files must still exist)."""
    from torchvision.datasets import CIFAR10

    if verify_md5:
        return CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return UncheckedCIFAR10


# --- generic CSV manifest --------------------------------------------------------------------

_CSV_SPLITS = {"train", "retain", "forget", "val", "test"}


@register_layout(
    "csv",
    options={"file": "manifest.csv", "image_size": 32, "path_column": "path", "image_root": None},
    expects="a CSV manifest (columns path, age or age_group; optional image_id, person_id, split)",
)
def read_csv_manifest(root: Path, *, file: str, image_size: int | None, path_column: str, image_root: str | None) -> LayoutData:
    """A generic manifest: task.path is the CSV itself or a folder holding `file`. Image paths are
    relative to `image_root` (default: the CSV's folder). A split column (train/retain/forget/val/
    test on every row) fixes the splits; age_group defaults to the organizers' formula over age."""
    size = _check_size(image_size, layout="csv")
    csv_path = root if root.is_file() else _require(root, file, layout="csv")
    base = Path(image_root) if image_root is not None else csv_path.parent
    if not base.is_absolute():
        base = csv_path.parent / base
    frame = _read_csv(csv_path, columns=(path_column,), layout="csv")
    if "age" not in frame.columns and "age_group" not in frame.columns:
        raise DataError(f"layout 'csv': {csv_path} needs a column 'age' or 'age_group'; has {', '.join(map(str, frame.columns))}")
    for column in ("age", "age_group"):
        if column in frame.columns and not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"layout 'csv': column {column!r} of {csv_path} must hold integers, got {frame[column].dtype}")
    rel = frame[path_column].astype(str)
    image_ids = frame["image_id"].astype(str) if "image_id" in frame.columns else rel
    persons = frame["person_id"].astype(str) if "person_id" in frame.columns else image_ids
    ages = frame["age"] if "age" in frame.columns else frame["age_group"]
    groups = frame["age_group"] if "age_group" in frame.columns else age_groups(frame["age"])
    split = None
    if "split" in frame.columns:
        values = frame["split"].fillna("").astype(str)
        bad = sorted(set(values) - _CSV_SPLITS)
        if bad:
            raise DataError(
                f"layout 'csv': column 'split' of {csv_path} holds {bad[0]!r}; use one of {', '.join(sorted(_CSV_SPLITS))} on every row"
            )
        split = values
    manifest = make_manifest(image_ids, persons, ages, groups, source=rel, split=split)
    images = read_images([base / r for r in rel], size=size, layout="csv")
    return LayoutData(
        manifest=manifest,
        images=images,
        description=f"CSV manifest {csv_path}: {len(manifest)} images",
        fixed_split=split is not None,
    )
