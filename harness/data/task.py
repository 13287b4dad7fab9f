"""The Task: a dataset read by its layout, split, fingerprinted; what every later stage consumes."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import TaskConfig
from harness.data.layouts import LAYOUTS, read_layout
from harness.data.loaders import SplitArrays
from harness.data.manifest import COLUMNS, LayoutData, fingerprint, manifest_csv, validate_manifest
from harness.data.splits import assign_splits
from harness.errors import DataError

ARRAY_SPLITS = ("retain", "forget", "val", "test", "train")  # train = retain + forget
DATA_CODE_VERSION = 2  # 2: UTKFace reads a photo in several folders once, CIFAR-10 drops held-out copies. Bump when readers or the generator change what they produce (cache keys)


@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity (it holds arrays)
class Task:
    manifest: pd.DataFrame  # one row per image: image_id, person_id, age, age_group, split, source
    images: np.ndarray  # float32 [n, C, H, W]; row i belongs to manifest row i
    num_classes: int
    description: str
    fingerprint: str  # sha256 of images + manifest CSV
    test_split: str = "test"  # "val" when the layout has no test set (Kaggle without test.csv)

    def arrays(self, split: str) -> SplitArrays:
        """One split as numpy arrays, rows in manifest order (train = retain + forget)."""
        if split not in ARRAY_SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(ARRAY_SPLITS)}")
        names = {"train": ("retain", "forget"), "test": (self.test_split,)}.get(split, (split,))
        mask = self.manifest["split"].isin(names).to_numpy()
        rows = self.manifest.loc[mask]
        return {
            "image": self.images[mask],
            "image_id": np.array(rows["image_id"], dtype=str),
            "age_group": np.array(rows["age_group"], dtype=np.int64),
            "age": np.array(rows["age"], dtype=np.int64),
            "person_id": np.array(rows["person_id"], dtype=str),
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and persons per split (test counts the val rows when they double as test)."""
        return split_counts(self.manifest, test_split=self.test_split)


def split_counts(manifest: pd.DataFrame, *, test_split: str = "test") -> dict[str, dict[str, int]]:
    out = {}
    for split in ("retain", "forget", "val", "test"):
        rows = manifest[manifest["split"] == (test_split if split == "test" else split)]
        out[split] = {"images": len(rows), "persons": int(rows["person_id"].nunique())}
    return out


def build_task(cfg: TaskConfig, *, cache_dir: str | Path | None = None, board: str = "public") -> Task:
    """Read (or generate) the dataset, assign retain/forget/val/test, fingerprint it.

    `board` "private": the private leaderboard's task, whose forget set is disjoint from the public
    one's (harness.data.splits.draw_private_forget); train, val and test are the same. With `cache_dir`, the layout's output is kept as an .npz keyed by the dataset, path, options
    and the files' sizes and times, so real layouts are decoded once.
    """
    data = _read_cached(cfg, cache_dir) if cache_dir is not None else read_layout(cfg.dataset, cfg.path, cfg.options)
    base_dir = None
    if cfg.path is not None:
        base_dir = Path(cfg.path).expanduser()
        base_dir = base_dir.parent if base_dir.is_file() else base_dir
    manifest, notes = assign_splits(
        data.manifest, split=cfg.split, forget=cfg.forget, fixed=data.fixed_split, base_dir=base_dir, board=board
    )
    manifest = manifest.loc[:, list(COLUMNS)].reset_index(drop=True)
    validate_manifest(manifest, images=data.images, num_classes=data.num_classes, where=f"dataset {cfg.dataset!r}")
    test_split = "val" if data.test_is_val else "test"
    counts = split_counts(manifest, test_split=test_split)
    summary = ", ".join(f"{name} {c['images']} ({c['persons']} persons)" for name, c in counts.items())
    return Task(
        manifest=manifest,
        images=data.images,
        num_classes=data.num_classes,
        description="; ".join([data.description, summary, *notes]),
        fingerprint=fingerprint(data.images, manifest),
        test_split=test_split,
    )


def _read_cached(cfg: TaskConfig, cache_dir: str | Path) -> LayoutData:
    layout = LAYOUTS.get(cfg.dataset) if cfg.dataset in LAYOUTS else None
    stamp = _tree_stamp(Path(cfg.path).expanduser()) if (layout and layout.needs_path and cfg.path) else ""
    key = hashlib.sha256(
        json.dumps(
            [DATA_CODE_VERSION, cfg.dataset, str(Path(cfg.path).resolve()) if cfg.path else None, cfg.options, stamp],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"layout-{cfg.dataset}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            manifest = pd.read_csv(io.StringIO(str(stored["manifest"])), dtype={"image_id": str, "person_id": str}, keep_default_na=False)
            return LayoutData(manifest=manifest, images=stored["images"], **meta)
    data = read_layout(cfg.dataset, cfg.path, cfg.options)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "description": data.description,
        "num_classes": data.num_classes,
        "fixed_split": data.fixed_split,
        "test_is_val": data.test_is_val,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images=data.images, manifest=np.str_(manifest_csv(data.manifest).decode()), meta=np.str_(json.dumps(meta)))
    os.replace(tmp, path)
    return data


def _tree_stamp(root: Path) -> str:
    """A cheap content stamp: every file's relative path, size and mtime under root."""
    h = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
