import glob
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.data.layouts import CIFAR_MEAN, CIFAR_STD, LAYOUTS, read_layout
from harness.errors import DataError

# the reference implementation below uses torchvision's (deprecated) decoders, as surf.py did
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def write_image(path, *, seed, size=8, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


def test_layouts_registry_names_every_layout():
    assert LAYOUTS.names() == ["casia-surf", "cifar10", "csv", "kaggle", "synthetic-faces", "utkface"]


def test_read_layout_unknown_name_suggests_closest():
    with pytest.raises(DataError, match="unknown layout 'synthetic-face'; did you mean 'synthetic-faces'"):
        read_layout("synthetic-face", None)


def test_read_layout_unknown_option_names_valid_ones():
    with pytest.raises(DataError, match="unknown option 'imagesize' for layout 'kaggle'; did you mean 'image_size'"):
        read_layout("kaggle", "/nonexistent", {"imagesize": 32})


@pytest.mark.parametrize("name", ["kaggle", "casia-surf", "utkface", "cifar10", "csv"])
def test_read_layout_missing_path_is_one_line_error(name, tmp_path):
    with pytest.raises(DataError, match=f"layout '{name}' needs task.path") as exc:
        read_layout(name, None)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match=f"layout '{name}': path .* does not exist"):
        read_layout(name, tmp_path / "absent")


def test_read_synthetic_manifest_and_images():
    data = read_layout("synthetic-faces", None, {"n_persons": 5, "images_per_person": [2, 3], "image_size": 16})
    m = data.manifest
    assert data.images.shape == (len(m), 3, 16, 16) and data.images.dtype == np.float32
    assert m["image_id"].is_unique and m["person_id"].nunique() == 5
    assert m["image_id"].iloc[0] == "p0000-00" and m["person_id"].iloc[0] == "p0000"
    assert not data.fixed_split and "synthetic faces: 5 persons" in data.description


# --- kaggle ----------------------------------------------------------------------------------


def make_kaggle(root, *, with_test):
    rows = {"retain": [], "forget": [], "validation": [], "test": []}
    person = 0
    for split, persons in (("retain", 4), ("forget", 1), ("validation", 2), ("test", 2)):
        for _ in range(persons):
            for k in (2, 0, 1):  # unsorted on purpose: the reader sorts by image path
                image_id = f"{person:03d}-{k}"
                write_image(root / "images" / f"{person:03d}" / f"{k}.png", seed=person * 10 + k, size=32)
                rows[split].append({"image_id": image_id, "person_id": person, "age": 20 + person, "age_group": person % 10})
            person += 1
    for split, items in rows.items():
        if split != "test" or with_test:
            pd.DataFrame(items).to_csv(root / f"{split}.csv", index=False)


def test_read_kaggle_splits_sorted_rows_and_raw_pixels(tmp_path):
    make_kaggle(tmp_path, with_test=True)
    data = read_layout("kaggle", tmp_path)
    m = data.manifest
    assert data.fixed_split and not data.test_is_val
    assert m["split"].value_counts().to_dict() == {"retain": 12, "forget": 3, "val": 6, "test": 6}
    assert m["image_id"].tolist()[:3] == ["000-0", "000-1", "000-2"]
    assert m["person_id"].iloc[0] == "0" and m["source"].iloc[0] == "images/000/0.png"
    expected = np.asarray(Image.open(tmp_path / "images/000/0.png")).transpose(2, 0, 1).astype(np.float32)
    assert np.array_equal(data.images[0], expected)


def test_read_kaggle_without_test_csv_uses_validation_and_says_so(tmp_path):
    make_kaggle(tmp_path, with_test=False)
    data = read_layout("kaggle", tmp_path)
    assert data.test_is_val and "no test.csv" in data.description
    assert "test" not in set(data.manifest["split"])


def test_read_kaggle_missing_file_names_layout_and_file(tmp_path):
    make_kaggle(tmp_path, with_test=False)
    os.remove(tmp_path / "forget.csv")
    with pytest.raises(DataError, match=r"layout 'kaggle' expects retain.csv, forget.csv, .* missing .*forget.csv$"):
        read_layout("kaggle", tmp_path)


def test_read_kaggle_missing_image_is_named(tmp_path):
    make_kaggle(tmp_path, with_test=False)
    os.remove(tmp_path / "images/001/2.png")
    with pytest.raises(DataError, match=r"image of '001-2'.*missing .*images/001/2.png"):
        read_layout("kaggle", tmp_path)


def test_read_kaggle_resizes_to_image_size(tmp_path):
    make_kaggle(tmp_path, with_test=False)
    assert read_layout("kaggle", tmp_path, {"image_size": 16}).images.shape[-2:] == (16, 16)


# --- CASIA-SURF ------------------------------------------------------------------------------


def make_surf(root, n_persons=18):
    ages = np.random.default_rng(1).integers(18, 60, n_persons)
    lines = []
    for p in range(n_persons):
        pid = f"{p:04d}"
        lines.append(f"{pid} {ages[p]} {'M' if p % 2 else 'F'}")
        for k in range(3):
            write_image(root / "WBackground" / f"session{p % 3}" / pid / "real.rssdk" / "color" / f"{k}.jpg", seed=p * 7 + k, size=40)
    (root / "Age_Gender.txt").write_text("\n".join(lines) + "\n")


def organizers_surf(root):
    """surf.py's logic (google-deepmind/unlearning_evaluation), with its own libraries."""
    import torchvision.transforms as T
    from sklearn import model_selection
    from torchvision import io

    labels_csv = np.loadtxt(
        os.path.join(root, "Age_Gender.txt"), dtype={"names": ("id", "age", "gender"), "formats": ("S11", "i4", "S1")}, delimiter=" "
    )
    users = np.array([u.decode("utf-8") for u in np.unique(labels_csv["id"])])
    ages = np.array([a for _, a, _ in labels_csv])
    groups = np.digitize(ages, np.linspace(np.min(ages), np.max(ages) + 1, 11)) - 1
    labels = {u.decode(): (int(g), int(a)) for u, a, g in zip(labels_csv["id"], labels_csv["age"], groups)}
    examples = []
    for f in sorted(glob.glob(os.path.join(root, "WBackground", "*/*"))):
        person_id = f.split("/")[-1]
        for img_path in sorted(glob.glob(os.path.join(f, "real.rssdk", "color", "*.jpg"))):
            image = T.Resize((32, 32))(io.read_image(img_path))
            examples.append({"image": image.to(torch.float32), "id": np.where(person_id == users)[0][0], "person": person_id,
                             "age_group": labels[person_id][0], "age": labels[person_id][1]})
    random.Random(43).shuffle(examples)
    n = len(examples)
    train, val, test = examples[: int(0.8 * n)], examples[int(0.8 * n) : int(0.9 * n)], examples[int(0.9 * n) :]
    ids = np.array([int(t["id"]) for t in train])
    retain_index, forget_index = next(model_selection.LeavePGroupsOut(n_groups=15).split(np.arange(len(ids))[:, None], None, ids))
    return train, val, test, retain_index, forget_index


def test_read_casia_surf_matches_organizers_surf_py(tmp_path):
    make_surf(tmp_path)
    data = read_layout("casia-surf", tmp_path)
    train, val, test, retain_index, forget_index = organizers_surf(str(tmp_path))
    m = data.manifest
    is_train = (m["split"] == "train").to_numpy()
    assert is_train.sum() == len(train) and (m["split"] == "val").sum() == len(val) and (m["split"] == "test").sum() == len(test)
    assert np.array_equal(data.images[is_train], np.stack([e["image"].numpy() for e in train]))
    assert np.array_equal(data.images[(m["split"] == "test").to_numpy()], np.stack([e["image"].numpy() for e in test]))
    assert m.loc[is_train, "age_group"].tolist() == [e["age_group"] for e in train]
    assert m.loc[is_train, "person_id"].tolist() == [e["person"] for e in train]

    # the organizers' forget set (LeavePGroupsOut(15), first split) is the first 15 person ids
    from harness.config import ForgetConfig, SplitConfig
    from harness.data.splits import assign_splits

    out, _ = assign_splits(m, split=SplitConfig(), forget=ForgetConfig(by="person", count=15, first_k=True), fixed=True)
    train_split = out.loc[is_train, "split"].to_numpy()
    assert np.array_equal(np.flatnonzero(train_split == "forget"), forget_index)
    assert np.array_equal(np.flatnonzero(train_split == "retain"), retain_index)


def test_read_casia_surf_missing_labels_file(tmp_path):
    make_surf(tmp_path, n_persons=2)
    os.remove(tmp_path / "Age_Gender.txt")
    with pytest.raises(DataError, match=r"layout 'casia-surf' expects Age_Gender.txt .* missing .*Age_Gender.txt$"):
        read_layout("casia-surf", tmp_path)


def test_read_casia_surf_person_without_label(tmp_path):
    make_surf(tmp_path, n_persons=2)
    (tmp_path / "Age_Gender.txt").write_text("0000 30 M\n")
    with pytest.raises(DataError, match=r"person folder .*0001 has no line in .*Age_Gender.txt"):
        read_layout("casia-surf", tmp_path)


def test_read_casia_surf_without_images(tmp_path):
    (tmp_path / "WBackground").mkdir()
    (tmp_path / "Age_Gender.txt").write_text("0000 30 M\n")
    with pytest.raises(DataError, match="found no such .jpg"):
        read_layout("casia-surf", tmp_path)


# --- UTKFace ---------------------------------------------------------------------------------


def make_utk(root):
    names = ["1_0_0_20161219.jpg.chip.jpg", "35_1_2_20170104.jpg.chip.jpg", "80_0_1_20170110.jpg.chip.jpg", "12_1_3_2017.jpg"]
    for i, name in enumerate(names):
        write_image(root / name, seed=i, size=20, fmt="JPEG")
    write_image(root / "notes_without_age.jpg", seed=9, fmt="JPEG")
    return names


def test_read_utkface_ages_from_names_each_image_its_person(tmp_path):
    make_utk(tmp_path)
    data = read_layout("utkface", tmp_path, {"image_size": 16})
    m = data.manifest
    assert sorted(m["age"]) == [1, 12, 35, 80] and (m["person_id"] == m["image_id"]).all()
    assert data.images.shape == (4, 3, 16, 16)
    assert m.set_index("age").loc[80, "age_group"] == 9 and m.set_index("age").loc[1, "age_group"] == 0
    assert "skipped 1 files" in data.description


def test_read_utkface_person_map_groups_images(tmp_path):
    names = make_utk(tmp_path)
    pd.DataFrame({"image_id": names[:2], "person_id": ["alice", "alice"]}).to_csv(tmp_path / "persons.csv", index=False)
    m = read_layout("utkface", tmp_path, {"person_map": "persons.csv"}).manifest
    assert (m["person_id"] == "alice").sum() == 2 and m["person_id"].nunique() == 3


def test_read_utkface_missing_person_map(tmp_path):
    make_utk(tmp_path)
    with pytest.raises(DataError, match=r"layout 'utkface' expects the person_map CSV .*persons.csv; missing"):
        read_layout("utkface", tmp_path, {"person_map": "persons.csv"})


# --- CIFAR-10 --------------------------------------------------------------------------------


def make_cifar(root, n_per_batch=6, n_test=8):
    """A tiny cifar-10-batches-py in torchvision's on-disk format (pickled dicts)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_read_cifar10_fake_files_fail_md5_with_hint(tmp_path):
    make_cifar(tmp_path)
    with pytest.raises(DataError, match="fails torchvision's checks .* set option verify_md5: false"):
        read_layout("cifar10", tmp_path)


def test_read_cifar10_reads_torchvision_format(tmp_path):
    make_cifar(tmp_path)
    data = read_layout("cifar10", tmp_path, {"verify_md5": False, "normalize": False})
    m = data.manifest
    assert len(m) == 38 and data.fixed_split
    assert m["split"].value_counts().to_dict() == {"train": 30, "test": 4, "val": 4}
    assert (m["person_id"] == m["image_id"]).all() and (m["age"] == m["age_group"]).all()
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert m["age_group"].iloc[6] == batch["labels"][0] and m["image_id"].iloc[6] == "train-00006"
    assert np.array_equal(data.images[6], batch["data"][0].reshape(3, 32, 32).astype(np.float32))
    # the starting kit halves the held-out set: test_set, val_set = random_split(held_out, [.5, .5], gen(42))
    held = list(range(8))
    test_part, _ = torch.utils.data.random_split(held, [0.5, 0.5], generator=torch.Generator().manual_seed(42))
    assert sorted(np.flatnonzero(m["split"] == "test") - 30) == sorted(test_part.indices)


def test_read_cifar10_normalises_like_the_starting_kit(tmp_path):
    make_cifar(tmp_path)
    raw = read_layout("cifar10", tmp_path / "cifar-10-batches-py", {"verify_md5": False, "normalize": False}).images
    norm = read_layout("cifar10", tmp_path, {"verify_md5": False}).images
    expected = (raw / 255.0 - np.array(CIFAR_MEAN, np.float32)[:, None, None]) / np.array(CIFAR_STD, np.float32)[:, None, None]
    assert np.allclose(norm, expected, atol=1e-5)


def test_read_cifar10_missing_batch_names_file(tmp_path):
    make_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DataError, match=r"layout 'cifar10' expects cifar-10-batches-py/ .* missing .*test_batch$"):
        read_layout("cifar10", tmp_path, {"verify_md5": False})


# --- generic CSV -----------------------------------------------------------------------------


def make_csv(root, *, split=None):
    rows = []
    for i in range(6):
        write_image(root / "imgs" / f"{i}.png", seed=i, size=12)
        rows.append({"path": f"imgs/{i}.png", "person_id": f"p{i // 2}", "age": 10 * i})
    frame = pd.DataFrame(rows)
    if split is not None:
        frame["split"] = split
    frame.to_csv(root / "manifest.csv", index=False)


def test_read_csv_manifest_defaults_and_age_groups(tmp_path):
    make_csv(tmp_path)
    data = read_layout("csv", tmp_path, {"image_size": 8})
    m = data.manifest
    assert data.images.shape == (6, 3, 8, 8) and not data.fixed_split
    assert m["image_id"].tolist()[0] == "imgs/0.png" and m["person_id"].nunique() == 3
    assert m["age_group"].tolist() == [0, 1, 3, 5, 7, 9]  # digitize over linspace(0, 51, 11)


def test_read_csv_manifest_file_path_and_fixed_split(tmp_path):
    make_csv(tmp_path, split=["retain", "retain", "forget", "forget", "val", "test"])
    data = read_layout("csv", tmp_path / "manifest.csv")
    assert data.fixed_split and data.manifest["split"].tolist()[2] == "forget"


def test_read_csv_manifest_rejects_bad_split_value(tmp_path):
    make_csv(tmp_path, split=["retain", "retain", "forget", "forget", "validation", "test"])
    with pytest.raises(DataError, match="holds 'validation'; use one of"):
        read_layout("csv", tmp_path)


def test_read_csv_manifest_missing_file_and_columns(tmp_path):
    with pytest.raises(DataError, match=r"layout 'csv' expects a CSV manifest .* missing .*manifest.csv$"):
        read_layout("csv", tmp_path)
    pd.DataFrame({"path": ["a.png"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="needs a column 'age' or 'age_group'"):
        read_layout("csv", tmp_path)
    pd.DataFrame({"path": ["a.png"], "age": [3]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"layout 'csv': image file .*a.png is missing"):
        read_layout("csv", tmp_path)


# --- each layout config's own forget set stands (configs/<layout>.yaml include the default's forget.count: 16)


def layout_task(name, root, **overrides):
    """configs/<name>.yaml as shipped, pointed at a generated dataset in that layout."""
    from harness.config import load_config
    from harness.data.task import build_task

    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml", overrides={"task.path": str(root), **overrides})
    return build_task(cfg.task)


def test_kaggle_config_keeps_the_layouts_forget_csv(tmp_path):
    make_kaggle(tmp_path, with_test=True)
    task = layout_task("kaggle", tmp_path)
    forget_csv = pd.read_csv(tmp_path / "forget.csv", dtype={"image_id": str})["image_id"]
    assert sorted(task.arrays("forget")["image_id"]) == sorted(forget_csv)
    assert "forget set as the layout gives it" in task.description


def test_utkface_config_forgets_five_percent_of_persons(tmp_path):
    for i in range(60):
        write_image(tmp_path / f"{20 + i % 50}_0_0_2017{i:04d}.jpg.chip.jpg", seed=i, fmt="JPEG")
    task = layout_task("utkface", tmp_path)
    train_persons = task.manifest.loc[task.manifest["split"].isin(["retain", "forget"]), "person_id"].nunique()
    assert train_persons == 48 and len(task.arrays("forget")["image_id"]) == round(0.05 * 48)


def test_cifar10_config_forgets_ten_percent_of_examples(tmp_path):
    make_cifar(tmp_path)
    task = layout_task("cifar10", tmp_path, **{"task.options.verify_md5": False})
    assert len(task.arrays("train")["image_id"]) == 30 and len(task.arrays("forget")["image_id"]) == 3


def test_casia_surf_config_forgets_the_first_fifteen_persons(tmp_path):
    make_surf(tmp_path)
    task = layout_task("casia-surf", tmp_path)
    m = task.manifest
    train_persons = sorted(m.loc[m["split"].isin(["retain", "forget"]), "person_id"].unique())
    assert sorted(m.loc[m["split"] == "forget", "person_id"].unique()) == train_persons[:15]


def test_csv_config_forgets_twenty_persons(tmp_path):
    rows = []
    for i in range(30):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
        rows.append({"path": f"imgs/{i}.png", "person_id": f"p{i}", "age": 20 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    task = layout_task("csv", tmp_path)
    assert task.manifest.loc[task.manifest["split"] == "forget", "person_id"].nunique() == 20


# --- no image in two splits ------------------------------------------------------------------


def make_utk_download(root, n=30):
    """A common UTKFace download: UTKFace/ holds every photo, crop_part1/ the same files again."""
    for i in range(n):
        name = f"{20 + i}_{i % 2}_0_2017{i:04d}.jpg.chip.jpg"
        write_image(root / "UTKFace" / name, seed=i, fmt="JPEG")
        if i % 3 == 0:
            (root / "crop_part1").mkdir(exist_ok=True)
            (root / "crop_part1" / name).write_bytes((root / "UTKFace" / name).read_bytes())


def test_read_utkface_reads_a_photo_in_two_folders_once(tmp_path):
    make_utk_download(tmp_path)
    data = read_layout("utkface", tmp_path)
    assert len(data.manifest) == 30 and data.manifest["source"].str.startswith("UTKFace/").all()
    assert "read 10 photos found in several folders once (e.g. crop_part1/20_0_0_20170000.jpg.chip.jpg is UTKFace/" in data.description


def test_build_task_refuses_a_copy_under_another_name_in_another_split(tmp_path):
    from harness.config import TaskConfig
    from harness.data.task import build_task

    make_utk_download(tmp_path)
    for i in range(0, 30, 3):  # the same bytes under new names: not the same UTKFace photo by name
        name = f"{20 + i}_{i % 2}_0_2017{i:04d}.jpg.chip.jpg"
        (tmp_path / "crop_part1" / name).rename(tmp_path / "crop_part1" / f"{20 + i}_{i % 2}_0_2099{i:04d}.jpg.chip.jpg")
    with pytest.raises(DataError, match=r"dataset 'utkface': the same image is in two splits: .*2017.* \(\w+\) and .*2099.* \(\w+\)( \(\d+ images are in more than one split\))?; remove the duplicate files") as exc:
        build_task(TaskConfig(dataset="utkface", path=str(tmp_path), options={"image_size": 8}))
    assert "\n" not in str(exc.value)


def test_read_cifar10_drops_held_out_copies_of_another_splits_image(tmp_path):
    """CIFAR-10's test set holds copies of training images (Barz & Denzler): the training rows
    stay as the starting kit indexes them; a held-out copy is dropped, so no image is in two splits."""
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "rb") as f:
        train = pickle.load(f)
    with open(folder / "test_batch", "rb") as f:
        held = pickle.load(f)
    held["data"][5] = train["data"][2]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(held, f)
    data = read_layout("cifar10", tmp_path, {"verify_md5": False})
    assert len(data.manifest) == 37 and "test-00005" not in set(data.manifest["image_id"])
    assert data.manifest["image_id"].tolist()[:30] == [f"train-{i:05d}" for i in range(30)]
    assert "dropped 1 held-out images identical to one in another split" in data.description
