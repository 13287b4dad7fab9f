import random

import numpy as np
import pytest

from harness.config import ForgetConfig, SplitConfig
from harness.data.manifest import make_manifest
from harness.data.splits import assign_splits, draw_forget, split_train_val_test, validate_splits
from harness.errors import DataError


def manifest(n_persons=20, per_person=3, *, split=None):
    persons = np.repeat([f"p{i:02d}" for i in range(n_persons)], per_person)
    ids = [f"{p}-{k}" for p, k in zip(persons, np.tile(np.arange(per_person), n_persons))]
    groups = np.repeat(np.arange(n_persons) % 10, per_person)
    return make_manifest(ids, persons, groups * 8, groups, split=split)


def test_split_train_val_test_by_person_keeps_persons_whole_and_is_seeded():
    m = manifest(40)
    a = split_train_val_test(m, SplitConfig())
    assert np.array_equal(a, split_train_val_test(m, SplitConfig()))
    assert not np.array_equal(a, split_train_val_test(m, SplitConfig(seed=1)))
    per_person = m.assign(split=a).groupby("person_id")["split"].nunique()
    assert (per_person == 1).all()
    counts = m.assign(split=a).groupby("split")["person_id"].nunique().to_dict()
    assert counts == {"train": 32, "val": 4, "test": 4}


def test_split_train_val_test_by_row_reproduces_the_organizers_shuffle():
    """surf.py: random.Random(43).shuffle(examples); [:int(.8n)], [int(.8n):int(.9n)], [int(.9n):]."""
    m = manifest(13, 3)
    labels = split_train_val_test(m, SplitConfig(by_person=False))
    order = list(range(len(m)))
    random.Random(43).shuffle(order)
    n = len(order)
    assert sorted(np.flatnonzero(labels == "train")) == sorted(order[: int(0.8 * n)])
    assert sorted(np.flatnonzero(labels == "val")) == sorted(order[int(0.8 * n) : int(0.9 * n)])


@pytest.mark.parametrize(
    "cfg, match",
    [
        (SplitConfig(train=0.8, val=0.1, test=0.2), "must be >= 0 and sum to 1"),
        (SplitConfig(train=0.98, val=0.01, test=0.01), "too few for a non-empty val split"),
    ],
    ids=["sum", "too-few"],
)
def test_split_train_val_test_rejects_bad_fractions(cfg, match):
    with pytest.raises(DataError, match=match):
        split_train_val_test(manifest(20), cfg)


def train_rows(n_persons=20):
    return manifest(n_persons).reset_index(drop=True)


def forget_persons(train, mask):
    return sorted(set(train.loc[mask, "person_id"]))


def test_draw_forget_by_person_count_takes_whole_persons_seeded():
    train = train_rows()
    mask = draw_forget(train, ForgetConfig(count=3, seed=5))
    assert len(forget_persons(train, mask)) == 3 and mask.sum() == 9
    assert np.array_equal(mask, draw_forget(train, ForgetConfig(count=3, seed=5)))
    assert not np.array_equal(mask, draw_forget(train, ForgetConfig(count=3, seed=6)))


def test_draw_forget_first_k_takes_smallest_person_ids():
    train = train_rows()
    mask = draw_forget(train, ForgetConfig(count=2, first_k=True))
    assert forget_persons(train, mask) == ["p00", "p01"]


def test_draw_forget_fraction_and_default_fraction():
    train = train_rows(40)
    assert len(forget_persons(train, draw_forget(train, ForgetConfig(fraction=0.25)))) == 10
    assert len(forget_persons(train, draw_forget(train, ForgetConfig()))) == 2  # 5% of 40 persons


def test_draw_forget_limited_to_classes():
    train = train_rows()
    mask = draw_forget(train, ForgetConfig(count=2, classes=(3,)))
    assert set(train.loc[mask, "age_group"]) == {3} and mask.sum() == 6


def test_draw_forget_by_example():
    train = make_manifest([f"i{i}" for i in range(10)], [f"i{i}" for i in range(10)], range(10), range(10))
    mask = draw_forget(train, ForgetConfig(by="example", count=4, seed=1))
    assert mask.sum() == 4
    assert np.flatnonzero(draw_forget(train, ForgetConfig(by="example", count=2, first_k=True))).tolist() == [0, 1]


def test_draw_forget_from_text_and_npy_index_files(tmp_path):
    train = train_rows()
    (tmp_path / "forget.txt").write_text("# ids\np03-0\np03-1\n\np03-2\n")
    mask = draw_forget(train, ForgetConfig(by="index_file", index_file="forget.txt"), base_dir=tmp_path)
    assert forget_persons(train, mask) == ["p03"] and mask.sum() == 3
    np.save(tmp_path / "forget_idx.npy", np.array([0, 1, 2]))
    mask = draw_forget(train, ForgetConfig(by="index_file", index_file=str(tmp_path / "forget_idx.npy")))
    assert np.flatnonzero(mask).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ForgetConfig(count=21), "asks for 21 persons but the train split has 20 persons"),
        (ForgetConfig(count=1, classes=(11,)), r"has 0 persons in classes \[11\]"),
        (ForgetConfig(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (ForgetConfig(by="index_file"), "index_file is not set"),
        (ForgetConfig(by="index_file", index_file="/nonexistent/ids.txt"), "does not exist"),
    ],
    ids=["too-many", "empty-classes", "fraction", "no-file", "missing-file"],
)
def test_draw_forget_rejects_bad_configs(cfg, match):
    with pytest.raises(DataError, match=match):
        draw_forget(train_rows(), cfg)


def test_draw_forget_index_file_outside_train(tmp_path):
    (tmp_path / "ids.txt").write_text("p03-0\nnot-an-id\n")
    with pytest.raises(DataError, match="1 ids are not in the train split .*'not-an-id'.* inside train"):
        draw_forget(train_rows(), ForgetConfig(by="index_file", index_file=str(tmp_path / "ids.txt")))
    np.save(tmp_path / "idx.npy", np.array([0, 60]))
    with pytest.raises(DataError, match="position 60 is outside the train split's 60 rows"):
        draw_forget(train_rows(), ForgetConfig(by="index_file", index_file=str(tmp_path / "idx.npy")))


def test_assign_splits_records_four_splits_and_forget_inside_train():
    out, notes = assign_splits(manifest(40), split=SplitConfig(), forget=ForgetConfig(count=4))
    assert set(out["split"]) == {"retain", "forget", "val", "test"} and notes == []
    before = split_train_val_test(manifest(40), SplitConfig())
    assert set(out.loc[before == "train", "split"]) == {"retain", "forget"}
    assert out.loc[out["split"] == "forget", "person_id"].nunique() == 4


def test_assign_splits_keeps_a_layouts_forget_set_unless_asked():
    split = ["retain"] * 30 + ["forget"] * 6 + ["val"] * 12 + ["test"] * 12
    m = manifest(20, 3, split=split)
    out, notes = assign_splits(m, split=SplitConfig(), forget=ForgetConfig(), fixed=True)
    assert (out["split"] == m["split"]).all() and "forget set as the layout gives it" in notes
    out, notes = assign_splits(m, split=SplitConfig(), forget=ForgetConfig(count=1, first_k=True), fixed=True)
    assert out.loc[out["split"] == "forget", "person_id"].unique().tolist() == ["p00"]
    assert "forget set redrawn from train by task.forget" in notes


def test_assign_splits_by_example_with_multi_image_persons_fails():
    with pytest.raises(DataError, match="has images in both forget and retain .* task.forget.by: person"):
        assign_splits(manifest(20), split=SplitConfig(), forget=ForgetConfig(by="example", count=1))


def test_validate_splits_rejects_unknown_and_empty_splits():
    with pytest.raises(DataError, match="manifest split 'train' is not one of"):
        validate_splits(manifest(2, 1, split=["train", "forget"]))
    with pytest.raises(DataError, match="the forget set is empty"):
        validate_splits(manifest(2, 1, split=["retain", "test"]))


# --- the private board's forget set ------------------------------------------------------------


def _forgotten(out):
    return set(out.loc[out["split"] == "forget", "image_id"])


@pytest.mark.parametrize("forget", [
    pytest.param(ForgetConfig(by="person", count=3), id="by-person-count"),
    pytest.param(ForgetConfig(by="person", fraction=0.2), id="by-person-fraction"),
    pytest.param(ForgetConfig(by="example", count=6), id="by-example"),
])
def test_assign_splits_private_board_forgets_a_disjoint_set_of_the_same_size(forget):
    m = manifest(40, 1 if forget.by == "example" else 3)
    public, _ = assign_splits(m, split=SplitConfig(), forget=forget)
    private, notes = assign_splits(m, split=SplitConfig(), forget=forget, board="private")
    assert not _forgotten(public) & _forgotten(private)
    assert len(_forgotten(private)) == len(_forgotten(public))
    train = lambda out: set(out.loc[out["split"].isin(["retain", "forget"]), "image_id"])  # noqa: E731
    assert train(private) == train(public)  # same train/val/test: one original serves both boards
    assert any("disjoint from the public forget set" in note for note in notes)
    again, _ = assign_splits(m, split=SplitConfig(), forget=forget, board="private")
    assert _forgotten(again) == _forgotten(private)


@pytest.mark.parametrize("forget, what", [
    pytest.param(ForgetConfig(by="person", count=3, first_k=True), "the first k persons", id="first-k"),
    pytest.param(ForgetConfig(by="person"), "the layout's own", id="layout-forget-set"),
])
def test_assign_splits_private_board_refuses_a_forget_set_no_seed_redraws(forget, what):
    split = np.array(["forget"] * 6 + ["train"] * 42 + ["val"] * 6 + ["test"] * 6, dtype=object)
    with pytest.raises(DataError, match=f"public forget set is {what}.*set task.forget.private_index_file") as exc:
        assign_splits(manifest(20, split=split), split=SplitConfig(), forget=forget, fixed=True, board="private")
    assert "\n" not in str(exc.value)


def test_assign_splits_private_index_file_must_miss_the_public_forget_set(tmp_path):
    split = np.array(["forget"] * 6 + ["train"] * 42 + ["val"] * 6 + ["test"] * 6, dtype=object)
    m = manifest(20, split=split)
    (tmp_path / "private.txt").write_text("p05-0\np05-1\np05-2\n")
    forget = ForgetConfig(by="person", private_index_file="private.txt")
    out, _ = assign_splits(m, split=SplitConfig(), forget=forget, fixed=True, base_dir=tmp_path, board="private")
    assert _forgotten(out) == {"p05-0", "p05-1", "p05-2"}
    (tmp_path / "private.txt").write_text("p00-0\np05-0\n")
    with pytest.raises(DataError, match=r"private_index_file private.txt lists 1 images of the public forget set \(e.g. 'p00-0'\)"):
        assign_splits(m, split=SplitConfig(), forget=forget, fixed=True, base_dir=tmp_path, board="private")
