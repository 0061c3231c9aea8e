"""Tests for icc_utils.vision.images and .episodes: image sets, domain shifts, ImageFolder loading, class splits,
episodes."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from icc_utils.data import verify_manifest
from icc_utils.io import sha256_file
from icc_utils.vision import episodes as E, images as I


@pytest.fixture(scope="module")
def digits() -> I.ImageSet:
    return I.load_digits_set()


# ---------------------------------------------------------------- image sets

def test_digits_shape_dtype_range_and_counts(digits):
    assert digits.name == "digits"
    assert digits.images.shape == (1797, 8, 8)
    assert digits.images.dtype == np.uint8
    assert digits.images.min() == 0 and digits.images.max() == 255
    # 0..16 scaled by 255/16 and rounded: exactly 17 grey levels
    assert sorted(np.unique(digits.images).tolist()) == [round(v * 255 / 16) for v in range(17)]
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.n_images == 1797 and digits.n_classes == 10
    assert digits.class_counts() == {"0": 178, "1": 182, "2": 177, "3": 183, "4": 181,
                                     "5": 182, "6": 181, "7": 179, "8": 174, "9": 180}


def test_digits_train_test_classes_disjoint_and_cover():
    assert set(I.DIGITS_TRAIN_CLASSES).isdisjoint(I.DIGITS_TEST_CLASSES)
    assert sorted(I.DIGITS_TRAIN_CLASSES + I.DIGITS_TEST_CLASSES) == [str(i) for i in range(10)]


def test_subset_and_classes_subset_keep_class_identity(digits):
    sub = digits.subset([5, 0, 7])
    assert sub.n_images == 3
    np.testing.assert_array_equal(sub.images[0], digits.images[5])
    np.testing.assert_array_equal(sub.labels, digits.labels[[5, 0, 7]])
    test = digits.classes_subset(I.DIGITS_TEST_CLASSES)
    assert test.n_images == 182 + 181 + 179 + 174 + 180
    assert test.class_names == digits.class_names  # labels still index the original names
    assert sorted(np.unique(test.labels).tolist()) == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="out of range"):
        digits.subset([digits.n_images])
    with pytest.raises(ValueError, match="'x'"):
        digits.classes_subset(["1", "x"])


def test_imageset_validation():
    with pytest.raises(ValueError, match="uint8"):
        I.ImageSet("bad", np.zeros((2, 4, 4), dtype=np.float32), np.array([0, 0]), ["a"])
    with pytest.raises(ValueError, match="labels has 1 entries"):
        I.ImageSet("bad", np.zeros((2, 4, 4), dtype=np.uint8), np.array([0]), ["a"])
    with pytest.raises(ValueError, match="labels must lie"):
        I.ImageSet("bad", np.zeros((2, 4, 4), dtype=np.uint8), np.array([0, 1]), ["a"])


# ---------------------------------------------------------------- domain shifts

def test_domain_shift_invert_and_rotate_exact(digits):
    inv = I.domain_shift(digits, "invert")
    assert inv.name == "digits-invert"
    np.testing.assert_array_equal(inv.images, 255 - digits.images)
    np.testing.assert_array_equal(inv.labels, digits.labels)
    rot = I.domain_shift(digits, "rotate")
    assert rot.name == "digits-rotate"
    for i in (0, 1, 500):
        np.testing.assert_array_equal(rot.images[i], np.rot90(digits.images[i]))
    assert not np.array_equal(rot.images, digits.images)


def test_domain_shift_noise_seeded_deterministic_in_range(digits):
    a = I.domain_shift(digits, "noise", seed=3)
    b = I.domain_shift(digits, "noise", seed=3)
    c = I.domain_shift(digits, "noise", seed=4)
    assert a.name == "digits-noise" and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 255
    diff = a.images.astype(float) - digits.images.astype(float)
    mid = (digits.images > 60) & (digits.images < 195)  # pixels where clipping rarely bites
    assert 30 < diff[mid].std() < 50  # sigma 40


def test_domain_shift_bad_kind(digits):
    with pytest.raises(ValueError) as err:
        I.domain_shift(digits, "blur")
    msg = str(err.value)
    assert "kind" in msg and "'blur'" in msg
    assert all(k in msg for k in ("invert", "rotate", "noise"))


# ---------------------------------------------------------------- ImageFolder

def _write_png(path, size, value, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def test_load_image_folder_skips_corrupt_file(tmp_path):
    root = tmp_path / "shapes"
    _write_png(root / "cat" / "a.png", (6, 4), 10)
    _write_png(root / "cat" / "b.png", (6, 4), 20)
    _write_png(root / "dog" / "a.png", (6, 4), 30)
    (root / "dog" / "x.png").write_bytes(b"this is not a png at all")
    _write_png(root / "eel" / "c.png", (6, 4), 40, mode="L")  # converted to RGB
    (root / "eel" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match=r"x\.png"):
        s = I.load_image_folder(root)
    assert s.name == "shapes"
    assert s.class_names == ["cat", "dog", "eel"]
    assert s.images.shape == (4, 4, 6, 3) and s.images.dtype == np.uint8
    assert s.labels.tolist() == [0, 0, 1, 2]
    assert s.paths == ["cat/a.png", "cat/b.png", "dog/a.png", "eel/c.png"]
    assert s.images[:, 0, 0, 0].tolist() == [10, 20, 30, 40]


def test_load_image_folder_grayscale_resize(tmp_path):
    root = tmp_path / "set"
    _write_png(root / "a" / "1.png", (5, 3), 100)
    _write_png(root / "b" / "1.png", (9, 9), 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unreadable: no warning expected
        s = I.load_image_folder(root, image_size=7, mode="L")
    assert s.images.shape == (2, 7, 7)
    assert s.images[0].min() == 100 and s.images[1].max() == 200


def test_load_image_folder_mixed_sizes_error(tmp_path):
    root = tmp_path / "mixed"
    _write_png(root / "a" / "1.png", (4, 4), 0)
    _write_png(root / "b" / "2.png", (5, 4), 0)
    with pytest.raises(ValueError) as err:
        I.load_image_folder(root)
    assert "2.png" in str(err.value) and "image_size" in str(err.value)


def test_load_image_folder_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        I.load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        I.load_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable images"):
        I.load_image_folder(tmp_path / "noimg")
    with pytest.raises(ValueError, match="mode"):
        I.load_image_folder(tmp_path / "noimg", mode="CMYK")


def test_to_png_bytes_roundtrip_and_upscale(digits):
    img = digits.images[3]
    back = np.asarray(Image.open(io.BytesIO(I.to_png_bytes(img))))
    np.testing.assert_array_equal(back, img)
    big = np.asarray(Image.open(io.BytesIO(I.to_png_bytes(img, size=32))))
    assert big.shape == (32, 32)
    np.testing.assert_array_equal(big, np.kron(img, np.ones((4, 4), dtype=np.uint8)))  # nearest neighbour
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[1, 2] = (1, 2, 3)
    assert np.asarray(Image.open(io.BytesIO(I.to_png_bytes(rgb))))[1, 2].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="uint8"):
        I.to_png_bytes(img.astype(np.float32))


# ---------------------------------------------------------------- class splits

def test_class_disjoint_split_and_file_roundtrip(tmp_path):
    names = [f"class{i:02d}" for i in range(10)]
    a = I.class_disjoint_split(names, seed=1)
    assert a == I.class_disjoint_split(list(reversed(names)), seed=1)  # deterministic, order-free
    assert len(a["test"]) == 4 and len(a["train"]) == 6  # test_fraction 0.4
    assert set(a["train"]).isdisjoint(a["test"]) and sorted(a["train"] + a["test"]) == names
    assert a["train"] == sorted(a["train"]) and a["test"] == sorted(a["test"]) and a["seed"] == 1
    others = {tuple(I.class_disjoint_split(names, seed=s)["test"]) for s in range(2, 8)}
    assert len(others | {tuple(a["test"])}) > 1  # the seed matters
    assert len(I.class_disjoint_split(names, n_test=2)["test"]) == 2
    path = I.write_split(tmp_path / "split.json", a)
    assert I.read_split(path) == a
    assert json.loads(path.read_text())["test"] == a["test"]


def test_class_disjoint_split_errors(tmp_path):
    with pytest.raises(ValueError, match="n_test"):
        I.class_disjoint_split(["a", "b", "c"], n_test=3)
    with pytest.raises(ValueError, match="at least 2"):
        I.class_disjoint_split(["a"])
    with pytest.raises(ValueError, match="test_fraction"):
        I.class_disjoint_split(["a", "b", "c"], test_fraction=0.1)
    with pytest.raises(ValueError, match="duplicates"):
        I.class_disjoint_split(["a", "a", "b"])
    with pytest.raises(ValueError, match="not class-disjoint"):
        I.write_split(tmp_path / "bad.json", {"train": ["a", "b"], "test": ["b"], "seed": 0})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        I.read_split(tmp_path / "missing.json")


# ---------------------------------------------------------------- episodes

def test_episode_deterministic_and_valid(digits):
    e1 = E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, 3, seed=123)
    e2 = E.generate_image_episode(digits, list(reversed(I.DIGITS_TEST_CLASSES)), 3, seed=123)
    assert e1 == e2
    e3 = E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, 3, seed=124)
    assert e3.indices != e1.indices
    assert e1.params["dataset"] == "digits" and e1.params["split"] == "test" and e1.params["condition"] is None
    assert e1.n_clusters == 3 and e1.n_points == len(e1.indices)


def test_episodes_properties_over_many_seeds(digits):
    for seed in range(40):
        c = 2 + seed % 3
        e = E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, c, seed=seed, length_range=(10, 30))
        assert 10 <= e.n_points <= 30
        assert len(set(e.indices)) == e.n_points  # no image twice
        assert sorted(set(e.labels)) == list(range(c))  # every cluster non-empty
        first = []
        for l in e.labels:
            if l not in first:
                first.append(l)
        assert first == list(range(c))  # canonical: numbered by first appearance
        # each cluster is one class, the class recorded in params["classes"], a test class
        assert len(set(e.params["classes"])) == c and set(e.params["classes"]) <= set(I.DIGITS_TEST_CLASSES)
        for idx, l in zip(e.indices, e.labels):
            assert digits.class_names[digits.labels[idx]] == e.params["classes"][l]


def test_episode_lengths_cover_range(digits):
    lengths = {E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, 2, seed=s, length_range=(5, 7)).n_points
               for s in range(60)}
    assert lengths == {5, 6, 7}


def test_too_many_clusters_for_test_classes(digits):
    with pytest.raises(ValueError) as err:
        E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, 6, seed=0)
    assert "n_clusters=6" in str(err.value) and "only 5 classes" in str(err.value)
    with pytest.raises(ValueError, match="only 5 classes"):
        E.make_image_episodes(digits, I.DIGITS_TEST_CLASSES, [6], 1, root_seed=0, split="test")
    assert E.generate_image_episode(digits, I.DIGITS_TEST_CLASSES, 5, seed=0).n_clusters == 5


def test_episode_other_errors(digits):
    small = digits.subset(np.flatnonzero(digits.labels == 6)[:3].tolist() + np.flatnonzero(digits.labels == 7).tolist())
    with pytest.raises(ValueError, match="has only 3 images"):
        E.generate_image_episode(small, ["6", "7"], 2, seed=0, length_range=(200, 200))
    with pytest.raises(ValueError, match="'x'"):
        E.generate_image_episode(digits, ["6", "x"], 2, seed=0)
    with pytest.raises(ValueError, match="split"):
        E.generate_image_episode(digits, ["6", "7"], 2, seed=0, split="dev")


def test_conditional_episode_by_attribute(digits):
    parity = np.array(["even" if int(digits.class_names[l]) % 2 == 0 else "odd" for l in digits.labels])
    s = I.ImageSet(digits.name, digits.images, digits.labels, digits.class_names, attributes={"parity": parity})
    e = E.generate_image_episode(s, ["even", "odd"], 2, seed=5, label_key="parity")
    assert e.params["condition"] == "parity"
    for idx, l in zip(e.indices, e.labels):
        assert parity[idx] == e.params["classes"][l]
    with pytest.raises(ValueError, match="label_key='size'"):
        E.generate_image_episode(s, ["even", "odd"], 2, seed=5, label_key="size")


def test_make_image_episodes_ids_seeds_split_disjoint(digits):
    test = E.make_image_episodes(digits, I.DIGITS_TEST_CLASSES, [2, 3, 4], 5, root_seed=7, split="test")
    train = E.make_image_episodes(digits, I.DIGITS_TRAIN_CLASSES, [2, 3, 4], 5, root_seed=7, split="train")
    assert len(test) == 15 and len(train) == 15
    assert test[0].id == "test-digits-c2-0000" and test[-1].id == "test-digits-c4-0004"
    assert train[0].id == "train-digits-c2-0000"
    assert len({e.seed for e in test}) == 15
    assert {e.seed for e in train}.isdisjoint({e.seed for e in test})
    assert test[0].seed == E.image_episode_seed(7, "test", 2, 0)
    again = E.make_image_episodes(digits, I.DIGITS_TEST_CLASSES, [2, 3, 4], 5, root_seed=7, split="test")
    assert again == test
    test_idx = {i for e in test for i in e.indices}
    train_idx = {i for e in train for i in e.indices}
    assert {digits.class_names[digits.labels[i]] for i in test_idx} <= set(I.DIGITS_TEST_CLASSES)
    assert {digits.class_names[digits.labels[i]] for i in train_idx} <= set(I.DIGITS_TRAIN_CLASSES)


def test_save_load_and_manifest(digits, tmp_path):
    eps = E.make_image_episodes(digits, I.DIGITS_TEST_CLASSES, [2, 4], 3, root_seed=1, split="test")
    path = E.save_image_episodes(tmp_path / "digits_test.jsonl", eps)
    back = E.load_image_episodes(path)
    assert back == eps and back[0].to_dict() == eps[0].to_dict()
    manifest = E.image_manifest(tmp_path / "manifest.json", {"test": path}, {"root_seed": 1})
    entry = manifest["files"]["test"]
    assert entry["sha256"] == sha256_file(path) and len(entry["sha256"]) == 64
    assert entry["n_episodes"] == 6 and entry["clusters"] == {"c2": 3, "c4": 3}
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert verify_manifest(tmp_path / "manifest.json") == []
    path.write_text(path.read_text().replace('"seed":', '"seed": ', 1))
    assert verify_manifest(tmp_path / "manifest.json") != []
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        E.load_image_episodes(tmp_path / "nope.jsonl")


def test_interleave_by_c_prefix_does_not_depend_on_the_total(digits):
    small = E.interleave_by_c(E.make_image_episodes(digits, I.DIGITS_TRAIN_CLASSES, [2, 3, 4], 4, 0, "train"))
    large = E.interleave_by_c(E.make_image_episodes(digits, I.DIGITS_TRAIN_CLASSES, [2, 3, 4], 9, 0, "train"))
    assert [e.n_clusters for e in small[:6]] == [2, 3, 4, 2, 3, 4]
    assert [e.id for e in small] == [e.id for e in large[:12]]
    assert len({e.id for e in large}) == 27
