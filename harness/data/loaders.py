"""Loaders as submissions see them, split files as they travel to the sandbox, class weights.

`make_loader` returns a plain torch DataLoader (iterating yields batches, len() works,
`.dataset` and `.batch_size` exist) over in-memory tensors. Its dataset answers a whole batch of
indices at once (`__getitems__`), so a batch costs one tensor gather instead of 64 item lookups
and a collate; indexing it still returns one example, as Kaggle code expects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from harness.errors import DataError
from harness.sandbox.protocol import BATCH_FORMATS  # what a submission's loaders may yield

SplitArrays = dict[str, np.ndarray]  # image float32 [n,C,H,W], image_id str, age_group int64, age int64, person_id str
KEYS = ("image", "image_id", "age_group", "age", "person_id")


def check_arrays(arrays: Mapping[str, np.ndarray], *, where: str = "split arrays") -> None:
    """All five keys, one length, images float32 [n, C, H, W]; a DataError otherwise."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{where} lack keys {missing}; a split needs {', '.join(KEYS)}")
    lengths = {k: len(arrays[k]) for k in KEYS}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{where} have unequal lengths {lengths}; every key needs one entry per image")
    image = arrays["image"]
    if image.ndim != 4 or image.dtype != np.float32:
        raise DataError(f"{where}: image must be float32 [n, C, H, W], got {image.dtype} {tuple(image.shape)}")


class SplitDataset(Dataset):
    """One split in memory. dataset[i] is a dict (or an (image, label) tuple in tuple format)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], *, batch_format: Literal["dict", "tuple"] = "dict"):
        check_arrays(arrays)
        if batch_format not in BATCH_FORMATS:
            raise DataError(f"batch_format must be 'dict' or 'tuple', got {batch_format!r}")
        self.batch_format = batch_format
        self.images = _tensor(arrays["image"], np.float32)
        self.age_group = _tensor(arrays["age_group"], np.int64)
        self.age = _tensor(arrays["age"], np.int64)
        self.image_id = np.asarray(arrays["image_id"], dtype=str)
        self.person_id = np.asarray(arrays["person_id"], dtype=str)

    def __len__(self) -> int:
        return len(self.age_group)

    def __getitem__(self, index: int) -> dict[str, Any] | tuple[torch.Tensor, int]:
        index = int(index)
        if self.batch_format == "tuple":
            return self.images[index], int(self.age_group[index])
        return {
            "image": self.images[index],
            "image_id": str(self.image_id[index]),
            "age_group": int(self.age_group[index]),
            "age": int(self.age[index]),
            "person_id": str(self.person_id[index]),
        }

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        return _Batch(self, indices)

    def batch(self, indices: Sequence[int]) -> dict[str, Any] | list[torch.Tensor]:
        """What default_collate would make of these examples, gathered in one go."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.batch_format == "tuple":
            return [self.images[idx], self.age_group[idx]]
        pos = idx.numpy()
        return {
            "image": self.images[idx],
            "image_id": self.image_id[pos].tolist(),
            "age_group": self.age_group[idx],
            "age": self.age[idx],
            "person_id": self.person_id[pos].tolist(),
        }


def _tensor(values: np.ndarray, dtype: type) -> torch.Tensor:
    """A tensor sharing memory with `values` where it can (a copy when read-only or not contiguous)."""
    array = np.ascontiguousarray(values, dtype=dtype)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


class _Batch(Sequence):
    """A batch of examples: a lazy sequence for any collate_fn, pre-gathered for ours."""

    def __init__(self, dataset: SplitDataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.dataset[j] for j in self.indices[i]]
        return self.dataset[self.indices[i]]

    def __iter__(self) -> Iterator:
        return (self.dataset[j] for j in self.indices)


def collate(batch: Any) -> Any:
    """Gathered batches pass through; anything else goes to torch's default_collate."""
    if isinstance(batch, _Batch):
        return batch.dataset.batch(batch.indices)
    return default_collate(batch)


def make_loader(
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
    shuffle: bool = True,
    batch_format: Literal["dict", "tuple"] = "dict",
    seed: int | None = None,
) -> DataLoader:
    """A DataLoader over one split: dict batches (image, image_id, age_group, age, person_id) or
    (image, age_group) tuples. `seed` fixes the shuffling order (a torch.Generator); None draws
    it from torch's global generator, as a plain DataLoader does."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    dataset = SplitDataset(arrays, batch_format=batch_format)
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and len(dataset) > 0,  # RandomSampler refuses an empty dataset
        collate_fn=collate,
        generator=generator,
        # A trailing batch of one crashes BatchNorm in train mode (unchanged Kaggle code too):
        # shuffled loaders drop it, a different example each epoch; evaluation loaders keep all.
        drop_last=shuffle and len(dataset) > 1 and len(dataset) % batch_size == 1,
    )


def save_split(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """One split as an .npz that loads without pickle (strings as fixed-width unicode); atomic."""
    check_arrays(arrays, where=f"split for {path}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {
        "image": np.ascontiguousarray(arrays["image"], dtype=np.float32),
        "image_id": np.asarray(arrays["image_id"], dtype=str),
        "age_group": np.asarray(arrays["age_group"], dtype=np.int64),
        "age": np.asarray(arrays["age"], dtype=np.int64),
        "person_id": np.asarray(arrays["person_id"], dtype=str),
    }
    with open(tmp, "wb") as f:
        np.savez(f, **payload)
    os.replace(tmp, path)


def load_split(path: str | Path) -> SplitArrays:
    """A split written by save_split (never unpickles: allow_pickle=False)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; write it with save_split")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"split file {path} is not a plain .npz ({str(exc).splitlines()[0]}); write it with save_split") from None
    check_arrays(arrays, where=f"split file {path}")
    return {k: arrays[k] for k in KEYS}


def class_weights(labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """1/count per class over `labels` (the train split), 1.0 for an absent class, as the organizers."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must be in 0..{num_classes - 1}, got values from {labels.min()} to {labels.max()}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)
