import numpy as np
import pytest
from PIL import Image

from harness.data.manifest import age_groups, fingerprint, make_manifest, read_images, validate_manifest
from harness.errors import DataError


@pytest.mark.parametrize(
    "ages",
    [[0, 5, 17, 40, 80], [18, 19, 25, 60], [30, 30, 31]],
    ids=["0-80", "adults", "narrow"],
)
def test_age_groups_is_the_organizers_formula(ages):
    expected = np.digitize(ages, np.linspace(np.min(ages), np.max(ages) + 1, 11)) - 1
    assert np.array_equal(age_groups(ages), expected)
    assert age_groups(ages).min() == 0 and age_groups(ages).max() <= 9


def manifest(n=4):
    return make_manifest([f"i{i}" for i in range(n)], ["a", "a", "b", "b"][:n], [1, 2, 3, 4][:n], [0, 1, 2, 3][:n])


def test_make_manifest_columns_and_dtypes():
    m = manifest()
    assert list(m.columns) == ["image_id", "person_id", "age", "age_group", "split", "source"]
    assert m["age"].dtype == np.int64 and m["age_group"].dtype == np.int64
    assert m["split"].tolist() == [""] * 4 and m["source"].tolist() == [""] * 4


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m.drop(columns="age"), r"lacks columns \['age'\]"),
        (lambda m: m.assign(image_id=["i0", "i0", "i2", "i3"]), "image_id must be unique, 'i0'"),
        (lambda m: m.assign(age_group=[0, 1, 2, 10]), r"age_group must be in 0..9, got 10 for image 'i3'"),
        (lambda m: m.iloc[:0], "has no images"),
    ],
    ids=["column", "duplicate", "label-range", "empty"],
)
def test_validate_manifest_rejects(change, match):
    with pytest.raises(DataError, match=match):
        validate_manifest(change(manifest()), num_classes=10, where="test")


def test_validate_manifest_checks_images_match_rows():
    with pytest.raises(DataError, match="3 images for 4 manifest rows"):
        validate_manifest(manifest(), images=np.zeros((3, 3, 2, 2), np.float32), num_classes=10, where="test")
    with pytest.raises(DataError, match="images must be float32"):
        validate_manifest(manifest(), images=np.zeros((4, 3, 2, 2)), num_classes=10, where="test")


def test_fingerprint_tracks_pixels_and_labels():
    images = np.zeros((4, 3, 2, 2), np.float32)
    base = fingerprint(images, manifest())
    assert fingerprint(images.copy(), manifest()) == base
    changed = images.copy()
    changed[3, 2, 1, 1] = 1
    assert fingerprint(changed, manifest()) != base
    assert fingerprint(images, manifest().assign(split=["retain", "forget", "val", "test"])) != base


def test_read_images_decodes_png_jpeg_and_grey_to_rgb(tmp_path):
    ramp = np.arange(10, dtype=np.uint8) * 20
    pixels = np.stack([np.add.outer(ramp, ramp) // 2, np.tile(ramp, (10, 1)), np.full((10, 10), 90, np.uint8)], -1)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "c.png")
    images = read_images([tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"], size=None, layout="test")
    assert images.shape == (3, 3, 10, 10) and images.dtype == np.float32
    assert np.array_equal(images[0], pixels.transpose(2, 0, 1).astype(np.float32))  # raw 0-255
    assert np.abs(images[1] - images[0]).mean() < 10  # lossy, close
    assert np.array_equal(images[2][0], images[2][1])  # grey replicated to 3 channels
    assert read_images([tmp_path / "a.png"], size=4, layout="test").shape == (1, 3, 4, 4)


def test_read_images_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"layout 'kaggle': image file .*missing.png is missing"):
        read_images([tmp_path / "missing.png"], size=8, layout="kaggle")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*bad.png"):
        read_images([tmp_path / "bad.png"], size=8, layout="csv")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(DataError, match="images differ in size"):
        read_images([tmp_path / "s.png", tmp_path / "t.png"], size=None, layout="csv")


def test_validate_manifest_refuses_an_image_in_two_splits():
    images = np.random.default_rng(0).random((4, 3, 2, 2), dtype=np.float32)
    images[3] = images[0]
    m = manifest().assign(split=["retain", "retain", "test", "forget"], source=["a.png", "b.png", "c.png", "copy/a.png"])
    with pytest.raises(DataError, match=r"^test: the same image is in two splits: a.png \(retain\) and copy/a.png \(forget\); remove the duplicate files"):
        validate_manifest(m, images=images, num_classes=10, where="test")
    images[3] = images[1]
    images[2] = images[1]
    m = m.assign(source=["", "", "", ""])  # no files: named by image_id
    with pytest.raises(DataError, match=r"i1 \(retain\) and i2 \(test\); "):
        validate_manifest(m, images=images, num_classes=10, where="test")


def test_validate_manifest_allows_copies_within_one_split():
    images = np.random.default_rng(0).random((4, 3, 2, 2), dtype=np.float32)
    images[1] = images[0]
    validate_manifest(manifest().assign(split=["retain", "retain", "test", "forget"]), images=images, num_classes=10, where="test")


def test_validate_manifest_names_images_inside_a_shared_file_by_id():
    images = np.random.default_rng(0).random((4, 3, 2, 2), dtype=np.float32)
    images[2] = images[0]
    m = manifest().assign(split=["retain", "retain", "test", "test"], source=["batch_1", "batch_1", "test_batch", "test_batch"])
    with pytest.raises(DataError, match=r"two splits: i0 in batch_1 \(retain\) and i2 in test_batch \(test\);"):
        validate_manifest(m, images=images, num_classes=10, where="test")
