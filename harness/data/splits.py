"""Splits: train/val/test, then the forget set inside train; deterministic from seeds, validated.

train/val/test follow the organizers: a `random.Random(seed).shuffle`, then cuts at
int(train * n) and int((train + val) * n), over persons (by_person, so test persons are unseen)
or over rows. A layout may fix them instead (Kaggle's CSVs, CASIA-SURF's shuffle, CIFAR-10).
The forget set is drawn from train by person, by example, or read from an index file, and is
recorded in the manifest's split column: retain / forget / val / test.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import ForgetConfig, SplitConfig
from harness.data.manifest import SPLITS
from harness.errors import DataError

DEFAULT_FORGET_FRACTION = 0.05  # of train persons (or examples) when neither count nor fraction is set
_TRAIN = ("train", "retain", "forget")
BOARDS = ("public", "private")
PRIVATE_SEED_OFFSET = 1_000  # the private board draws its forget set with seed + this, as Kaggle used another seed


def split_train_val_test(manifest: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """'train' / 'val' / 'test' per row after a seeded shuffle of persons (by_person) or rows."""
    fractions = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise DataError(
            f"task.split fractions must be >= 0 and sum to 1, got train={cfg.train}, val={cfg.val}, "
            f"test={cfg.test}; fix task.split"
        )
    if cfg.by_person:
        units = sorted(manifest["person_id"].unique())
        unit_of_row = manifest["person_id"].to_numpy()
    else:
        units = list(range(len(manifest)))
        unit_of_row = np.arange(len(manifest))
    order = list(units)
    random.Random(cfg.seed).shuffle(order)
    n = len(order)
    cut1 = int(cfg.train * n)
    cut2 = int(round(cfg.train + cfg.val, 12) * n)
    label = {}
    for name, part in (("train", order[:cut1]), ("val", order[cut1:cut2]), ("test", order[cut2:])):
        if fractions[name] > 0 and not part:
            kind = "persons" if cfg.by_person else "images"
            raise DataError(
                f"task.split: {n} {kind} are too few for a non-empty {name} split at train={cfg.train}, "
                f"val={cfg.val}, test={cfg.test}; use more data or other fractions"
            )
        label.update(dict.fromkeys(part, name))
    return np.asarray([label[u] for u in unit_of_row], dtype=object)


def forget_requested(cfg: ForgetConfig) -> bool:
    """Whether the config asks for a forget set of its own (else a layout's own forget set stands)."""
    return cfg.count is not None or cfg.fraction is not None or cfg.by == "index_file"


def draw_forget(train: pd.DataFrame, cfg: ForgetConfig, *, base_dir: Path | None = None) -> np.ndarray:
    """Boolean mask over `train`'s rows: the forget set, by person, by example or from an index file."""
    if cfg.by == "index_file":
        return _forget_from_file(train, cfg, base_dir=base_dir)
    if cfg.by not in ("person", "example"):
        raise DataError(f"task.forget.by must be 'person', 'example' or 'index_file', got {cfg.by!r}")
    groups = train["age_group"].to_numpy()
    eligible_rows = np.ones(len(train), bool) if cfg.classes is None else np.isin(groups, cfg.classes)
    if cfg.by == "person":
        persons = train["person_id"].to_numpy()
        outside = set(persons[~eligible_rows])
        candidates = np.asarray(sorted(p for p in set(persons) if p not in outside), dtype=object)
    else:
        candidates = np.flatnonzero(eligible_rows)
    kind = "persons" if cfg.by == "person" else "examples"
    k = _forget_size(cfg, len(candidates), kind=kind)
    if cfg.first_k:
        chosen = candidates[:k]
    else:
        chosen = candidates[np.sort(np.random.default_rng(cfg.seed).choice(len(candidates), size=k, replace=False))]
    if cfg.by == "person":
        return np.isin(train["person_id"].to_numpy(), chosen)
    mask = np.zeros(len(train), bool)
    mask[chosen.astype(np.int64)] = True
    return mask


def _forget_size(cfg: ForgetConfig, available: int, *, kind: str) -> int:
    where = "" if cfg.classes is None else f" in classes {list(cfg.classes)}"
    if cfg.count is not None:
        k = cfg.count
    else:
        fraction = DEFAULT_FORGET_FRACTION if cfg.fraction is None else cfg.fraction
        if not 0 < fraction <= 1:
            raise DataError(f"task.forget.fraction must be in (0, 1], got {fraction}; fix task.forget")
        k = max(1, int(round(fraction * available)))
    if k < 1 or k > available:
        raise DataError(
            f"task.forget asks for {k} {kind} but the train split has {available} {kind}{where}; "
            f"set task.forget.count between 1 and {available}"
        )
    return k


def _forget_from_file(train: pd.DataFrame, cfg: ForgetConfig, *, base_dir: Path | None, key: str = "index_file") -> np.ndarray:
    """A text file of image_ids (one a line) or a .npy of integer positions among the train rows;
    `key` names the ForgetConfig field holding the path (index_file, private_index_file)."""
    given = getattr(cfg, key)
    if given is None:
        raise DataError("task.forget.by is 'index_file' but task.forget.index_file is not set; give the file's path")
    path = Path(given).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if not path.is_file():
        raise DataError(f"task.forget.{key} {given} does not exist (looked in {base_dir or '.'}); fix the path")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"task.forget.{key} {path}: not a plain .npy array ({exc})") from None
        if values.dtype.kind in "iu":
            bad = values[(values < 0) | (values >= len(train))]
            if bad.size:
                raise DataError(
                    f"task.forget.{key} {path}: position {int(bad[0])} is outside the train split's "
                    f"{len(train)} rows; positions must index the train rows"
                )
            mask = np.zeros(len(train), bool)
            mask[values.astype(np.int64)] = True
            return mask
        ids = [str(v) for v in values.ravel()]
    else:
        ids = [s.strip() for s in path.read_text().splitlines() if s.strip() and not s.startswith("#")]
    if not ids:
        raise DataError(f"task.forget.{key} {path} lists no image ids; write one image_id per line")
    known = set(train["image_id"])
    missing = [i for i in ids if i not in known]
    if missing:
        raise DataError(
            f"task.forget.{key} {path}: {len(missing)} ids are not in the train split (e.g. {missing[0]!r}); "
            "the forget set must lie inside train"
        )
    return train["image_id"].isin(ids).to_numpy()


def assign_splits(
    manifest: pd.DataFrame,
    *,
    split: SplitConfig,
    forget: ForgetConfig,
    fixed: bool = False,
    base_dir: Path | None = None,
    board: str = "public",
) -> tuple[pd.DataFrame, list[str]]:
    """A copy of `manifest` with split in retain/forget/val/test, and notes for the task description.

    `fixed`: the layout set the split column (train or retain/forget, val, test). Its forget rows
    stand unless the config asks for a forget set (count, fraction or an index file).
    `board`: "private" forgets the private leaderboard's forget set (draw_private_forget) instead.
    """
    if board not in BOARDS:
        raise DataError(f"unknown leaderboard {board!r}; use one of {', '.join(BOARDS)}")
    out = manifest.copy()
    notes: list[str] = []
    if fixed:
        values = set(out["split"])
        bad = sorted(values - {*_TRAIN, "val", "test"})
        if bad:
            raise DataError(f"the layout's split column holds {bad[0]!r}; each row needs one of train, retain, forget, val, test")
        notes.append("train/val/test as the layout fixes them (task.split not used)")
    else:
        out["split"] = split_train_val_test(out, split)
    train_mask = out["split"].isin(_TRAIN).to_numpy()
    preset = (out["split"] == "forget").to_numpy()
    if preset.any() and not forget_requested(forget):
        notes.append("forget set as the layout gives it")
        out.loc[train_mask & ~preset, "split"] = "retain"
    else:
        train = out.loc[train_mask].reset_index(drop=True)
        if len(train) == 0:
            raise DataError("the train split is empty; check the layout's split or task.split fractions")
        mask = draw_forget(train, forget, base_dir=base_dir)
        out.loc[train_mask, "split"] = np.where(mask, "forget", "retain")
        if preset.any():
            notes.append("forget set redrawn from train by task.forget")
    if board == "private":
        train = out.loc[train_mask].reset_index(drop=True)
        public = (train["split"] == "forget").to_numpy()
        private = draw_private_forget(train, public, forget, layout_forget=preset.any() and not forget_requested(forget),
                                      base_dir=base_dir)
        out.loc[train_mask, "split"] = np.where(private, "forget", "retain")
        persons = train.loc[private, "person_id"].nunique()
        notes.append(f"private forget set: {int(private.sum())} images of {persons} persons, disjoint from the public "
                     f"forget set ({int(public.sum())} images, none shared)")
    validate_splits(out)
    return out, notes


def draw_private_forget(train: pd.DataFrame, public: np.ndarray, cfg: ForgetConfig, *, layout_forget: bool,
                        base_dir: Path | None = None) -> np.ndarray:
    """The private leaderboard's forget set over `train`'s rows, disjoint from `public` by construction.

    Read from task.forget.private_index_file when set (refused if it touches the public set), else
    drawn by the public set's own rule from the train rows outside it, with another seed and as many
    persons (or examples) as the public set. A public set no seed redraws (the layout's own, first_k,
    an index file) gives no such rule: the private one must then come from a file, and the error says so.
    """
    key = "task.forget.private_index_file"
    if cfg.private_index_file is not None:
        mask = _forget_from_file(train, cfg, base_dir=base_dir, key="private_index_file")
        shared = train.loc[mask & public, "image_id"].tolist()
        if shared:
            raise DataError(
                f"{key} {cfg.private_index_file} lists {len(shared)} images of the public forget set (e.g. {shared[0]!r}); "
                "the two boards' forget sets must be disjoint: list train images outside the public forget set"
            )
        return mask
    fixed = ("the layout's own" if layout_forget else "the first k persons (first_k)" if cfg.first_k
             else "read from task.forget.index_file" if cfg.by == "index_file" else None)
    if fixed is not None:
        raise DataError(
            f"the private leaderboard needs a forget set disjoint from the public one, but the public forget set is "
            f"{fixed}, which no seed redraws; set {key} to a file of image_ids (one a line) from the train split "
            "outside the public forget set"
        )
    rest = np.flatnonzero(~public)
    units = train.loc[public, "person_id"].nunique() if cfg.by == "person" else int(public.sum())
    rule = replace(cfg, seed=cfg.seed + PRIVATE_SEED_OFFSET, count=cfg.count or units, fraction=None)
    try:
        drawn = draw_forget(train.iloc[rest].reset_index(drop=True), rule, base_dir=base_dir)
    except DataError as exc:
        raise DataError(f"private leaderboard, drawing outside the public forget set: {exc}") from None
    mask = np.zeros(len(train), bool)
    mask[rest[drawn]] = True
    return mask


def validate_splits(manifest: pd.DataFrame) -> None:
    """Only the four split names; non-empty retain and forget; no person both forgotten and retained."""
    split = manifest["split"]
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise DataError(f"manifest split {bad[0]!r} is not one of {', '.join(SPLITS)}; assign the splits first")
    for name in ("retain", "forget"):
        if not (split == name).any():
            raise DataError(f"the {name} set is empty; adjust task.forget (count, fraction, classes) or the data")
    forget_persons = set(manifest.loc[split == "forget", "person_id"])
    shared = sorted(forget_persons & set(manifest.loc[split == "retain", "person_id"]))
    if shared:
        raise DataError(
            f"person {shared[0]!r} has images in both forget and retain ({len(shared)} such persons); "
            "forget whole persons with task.forget.by: person"
        )
