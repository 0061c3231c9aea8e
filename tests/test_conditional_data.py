"""Tests for the text-conditioned image data in icc_utils.vision: the procedural shapes set,
combination splits, conditional episodes and the Stanford 40 / ImageNet-attributes loaders."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from icc_utils.vision import datasets as D, episodes as E, images as I, shapes as S


@pytest.fixture(scope="module")
def shapes() -> I.ImageSet:
    return S.make_shapes_set(n_images=1200, seed=0)


def _inside(img: np.ndarray) -> np.ndarray:
    """Pixels of the shape: far from the background grey (the corner pixel is always background)."""
    bg = img[0, 0].astype(float)
    return np.abs(img.astype(float) - bg).max(axis=-1) > 60


# ---------------------------------------------------------------- shapes set

def test_shapes_set_structure(shapes):
    assert shapes.name == "shapes"
    assert shapes.images.shape == (1200, 16, 16, 3) and shapes.images.dtype == np.uint8
    assert set(shapes.attributes) == {"shape", "color", "pattern", "object"}
    assert S.SHAPES_CONDITIONS == ("shape", "color", "pattern")
    a = shapes.attributes
    for i in (0, 7, 1199):
        assert a["object"][i] == f"{a['color'][i]} {a['pattern'][i]} {a['shape'][i]}"
        assert shapes.class_names[shapes.labels[i]] == a["object"][i]
    assert shapes.class_names == sorted(set(a["object"].tolist()))
    assert shapes.n_classes == 4 * 4 * 3  # every combination present at n=1200
    # corners are background: light grey, equal channels, in the documented range
    corners = shapes.images[:, 0, 0, :].astype(int)
    assert (corners[:, 0] == corners[:, 1]).all() and (corners[:, 1] == corners[:, 2]).all()
    assert corners[:, 0].min() >= 185 and corners[:, 0].max() <= 235
    assert len(np.unique(corners[:, 0])) > 20  # background level varies


def test_shapes_set_deterministic_and_seed_dependent():
    a = S.make_shapes_set(n_images=60, seed=3)
    b = S.make_shapes_set(n_images=60, seed=3)
    c = S.make_shapes_set(n_images=60, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names
    for k in a.attributes:
        np.testing.assert_array_equal(a.attributes[k], b.attributes[k])
    assert not np.array_equal(a.images, c.images)
    assert a.attributes["object"].tolist() != c.attributes["object"].tolist()


def test_shapes_set_nuisance_variation(shapes):
    # images of one object are not all identical (position, size, background jitter)
    obj = shapes.class_names[0]
    idx = np.flatnonzero(shapes.attributes["object"] == obj)
    assert len(idx) >= 10
    flat = shapes.images[idx].reshape(len(idx), -1)
    assert len({row.tobytes() for row in flat}) == len(idx)


def test_shapes_attributes_uniform_and_independent(shapes):
    a = shapes.attributes
    expected = {"shape": S.SHAPES_SHAPES, "color": tuple(S.SHAPES_COLORS), "pattern": S.SHAPES_PATTERNS}
    for key, vals in expected.items():
        assert len(vals) >= 3
        counts = {v: int((a[key] == v).sum()) for v in vals}
        assert set(np.unique(a[key]).tolist()) == set(vals)
        mean = 1200 / len(vals)
        assert all(0.8 * mean < n < 1.2 * mean for n in counts.values()), (key, counts)
    # independence: every pair of values co-occurs about as often as the product of marginals
    for k1, k2 in itertools.combinations(expected, 2):
        for v1, v2 in itertools.product(expected[k1], expected[k2]):
            joint = int(((a[k1] == v1) & (a[k2] == v2)).sum())
            exp = 1200 / (len(expected[k1]) * len(expected[k2]))
            assert 0.55 * exp < joint < 1.45 * exp, (v1, v2, joint, exp)


def test_shapes_colors_differ_in_right_channel(shapes):
    a = shapes.attributes

    def mean_rgb(color):
        idx = np.flatnonzero((a["color"] == color) & (a["pattern"] == "solid"))[:20]
        return np.mean([shapes.images[i][_inside(shapes.images[i])].mean(axis=0) for i in idx], axis=0)

    red, green, blue, yellow = (mean_rgb(c) for c in ("red", "green", "blue", "yellow"))
    assert red[0] > 150 and red[0] > red[1] + 100 and red[0] > red[2] + 100
    assert blue[2] > 150 and blue[2] > blue[0] + 100
    assert green[1] > green[0] + 80 and green[1] > green[2] + 80
    assert yellow[0] > 150 and yellow[1] > 150 and yellow[2] < 60
    assert red[0] - blue[0] > 120 and blue[2] - red[2] > 120


def test_shapes_patterns_visible(shapes):
    a = shapes.attributes

    def mean_std(pattern):
        idx = np.flatnonzero((a["pattern"] == pattern) & (a["color"] == "red"))[:25]
        return float(np.mean([shapes.images[i][..., 0][_inside(shapes.images[i])].std() for i in idx]))

    solid, striped, dotted = mean_std("solid"), mean_std("striped"), mean_std("dotted")
    assert solid < 25  # uniform fill (anti-aliased edges only)
    assert striped > 2 * solid + 20 and dotted > solid + 15

    # stripes are horizontal rows: in a striped image, adjacent rows inside the shape alternate
    idx = np.flatnonzero((a["pattern"] == "striped") & (a["shape"] == "square"))[0]
    img = shapes.images[idx][..., :].astype(float).max(axis=-1)
    rows = [img[r, _inside(shapes.images[idx])[r]].mean() for r in range(16) if _inside(shapes.images[idx])[r].sum() >= 4]
    diffs = np.abs(np.diff(rows))
    assert np.median(diffs) > 60


def test_shapes_shapes_differ(shapes):
    # the area covered differs by shape: a cross covers less of its bounding box than a square
    a = shapes.attributes

    def fill_ratio(shape):
        idx = np.flatnonzero((a["shape"] == shape) & (a["pattern"] == "solid"))[:20]
        out = []
        for i in idx:
            m = _inside(shapes.images[i])
            ys, xs = np.nonzero(m)
            out.append(m.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
        return float(np.mean(out))

    sq, ci, tr, cr = (fill_ratio(s) for s in ("square", "circle", "triangle", "cross"))
    assert sq > 0.9
    assert sq > ci + 0.05 and ci > tr + 0.1 and ci > cr + 0.05 and tr < 0.7


def test_shapes_set_errors():
    with pytest.raises(ValueError, match="n_images"):
        S.make_shapes_set(n_images=0)
    with pytest.raises(ValueError, match="image_size"):
        S.make_shapes_set(n_images=5, image_size=2)
    big = S.make_shapes_set(n_images=4, seed=1, image_size=32, name="big")
    assert big.images.shape == (4, 32, 32, 3) and big.name == "big"


# ---------------------------------------------------------------- combination split

def test_combination_split_properties(shapes, tmp_path):
    split = S.combination_split(shapes, test_fraction=0.3, seed=0)
    objects = sorted(set(shapes.attributes["object"].tolist()))
    assert set(split["train"]).isdisjoint(split["test"])
    assert sorted(split["train"] + split["test"]) == objects
    assert len(split["test"]) == round(0.3 * len(objects)) and split["seed"] == 0
    parts = lambda obj: dict(zip(("color", "pattern", "shape"), obj.split(" ")))  # noqa: E731
    for key, vals in (("shape", S.SHAPES_SHAPES), ("color", S.SHAPES_COLORS), ("pattern", S.SHAPES_PATTERNS)):
        assert {parts(o)[key] for o in split["train"]} == set(vals)
        assert {parts(o)[key] for o in split["test"]} == set(vals)  # default: test covers all values too
    assert S.combination_split(shapes, seed=0) == split
    assert S.combination_split(shapes, seed=5)["test"] != split["test"]
    path = I.write_split(tmp_path / "combo.json", split)
    assert I.read_split(path) == split
    assert json.loads(path.read_text())["test"] == split["test"]


def test_combination_split_impossible():
    # two objects sharing no value: any split leaves some value out of train
    s = I.ImageSet("tiny", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), ["a", "b"],
                   attributes={"object": np.array(["a", "b"]), "color": np.array(["red", "blue"])})
    with pytest.raises(ValueError, match="every value"):
        S.combination_split(s, test_fraction=0.5, conditions=("color",), max_tries=50)
    with pytest.raises(ValueError, match="test_fraction"):
        S.combination_split(s, test_fraction=1.5, conditions=("color",))
    bad = I.ImageSet("bad", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 0]), ["a"],
                     attributes={"object": np.array(["a", "a"]), "color": np.array(["red", "blue"])})
    with pytest.raises(ValueError, match="different attribute values"):
        S.combination_split(bad, conditions=("color",))


# ---------------------------------------------------------------- conditional episodes

def test_conditional_episodes_follow_condition(shapes):
    split = S.combination_split(shapes, seed=0)
    test_objects = set(split["test"])
    eps = E.make_conditional_episodes(shapes, split["test"], S.SHAPES_CONDITIONS, [2, 3], 4,
                                      root_seed=1, split="test")
    assert len(eps) == 3 * 2 * 4
    assert len({e.id for e in eps}) == len(eps)
    assert eps[0].id == "test-shapes-shape-c2-0000" and eps[-1].id == "test-shapes-pattern-c3-0003"
    for e in eps:
        cond = e.params["condition"]
        assert cond in S.SHAPES_CONDITIONS and cond in e.id
        assert e.params["dataset"] == "shapes" and e.params["n_objects"] == len(test_objects)
        assert 10 <= e.n_points <= 30 and len(set(e.indices)) == e.n_points
        assert sorted(set(e.labels)) == list(range(e.n_clusters))
        values = shapes.attributes[cond]
        for idx, lab in zip(e.indices, e.labels):
            assert 0 <= idx < shapes.n_images  # indices into the FULL set
            assert shapes.attributes["object"][idx] in test_objects
            assert values[idx] == e.params["classes"][lab]
        # same label <=> same attribute value
        for (i, li), (j, lj) in itertools.combinations(zip(e.indices, e.labels), 2):
            assert (li == lj) == (values[i] == values[j])
    # the same image set clustered by different conditions gives different labelings
    assert {e.params["condition"] for e in eps} == set(S.SHAPES_CONDITIONS)


def test_conditional_episodes_deterministic_and_split_seeds(shapes):
    split = S.combination_split(shapes, seed=0)
    a = E.make_conditional_episodes(shapes, split["test"], ["color"], [2, 4], 3, root_seed=2, split="test")
    b = E.make_conditional_episodes(shapes, list(reversed(split["test"])), ["color"], [2, 4], 3,
                                    root_seed=2, split="test")
    assert a == b
    tr = E.make_conditional_episodes(shapes, split["train"], ["color"], [2, 4], 3, root_seed=2, split="train")
    assert {e.seed for e in a}.isdisjoint({e.seed for e in tr})
    assert all(shapes.attributes["object"][i] in set(split["train"]) for e in tr for i in e.indices)
    other = E.make_conditional_episodes(shapes, split["test"], ["shape"], [2, 4], 3, root_seed=2, split="test")
    assert {e.seed for e in a}.isdisjoint({e.seed for e in other})
    assert a[0].seed == E.conditional_seed(2, "test", "color", 2, 0)
    # episodes survive the JSONL round trip
    back = [E.ImageEpisode.from_dict(json.loads(json.dumps(e.to_dict()))) for e in a]
    assert back == a


def test_conditional_episodes_errors(shapes):
    with pytest.raises(ValueError, match="'texture'"):
        E.make_conditional_episodes(shapes, None, ["texture"], [2], 1, root_seed=0, split="test")
    with pytest.raises(ValueError, match="not values of 'object'"):
        E.make_conditional_episodes(shapes, ["purple solid blob"], ["shape"], [2], 1, root_seed=0, split="test")
    with pytest.raises(ValueError, match="only 3"):
        E.make_conditional_episodes(shapes, None, ["pattern"], [4], 1, root_seed=0, split="test")


def test_conditional_episodes_skip_missing_values():
    n = 40
    color = np.array(["red", "blue", "", "ambiguous"] * (n // 4))
    obj = np.array(["o1", "o2"] * (n // 2))
    s = I.ImageSet("m", np.zeros((n, 4, 4, 3), np.uint8), np.zeros(n, dtype=np.int64), ["x"],
                   attributes={"color": color, "object": obj})
    eps = E.make_conditional_episodes(s, None, ["color"], [2], 10, root_seed=0, split="test", length_range=(4, 8))
    used = {i for e in eps for i in e.indices}
    assert used and {color[i] for i in used} == {"red", "blue"}
    assert all(sorted(e.params["classes"]) == ["blue", "red"] for e in eps)
    with pytest.raises(ValueError, match="only 2"):
        E.make_conditional_episodes(s, None, ["color"], [3], 1, root_seed=0, split="test", length_range=(4, 8))


# ---------------------------------------------------------------- loaders

def _jpg(path, rgb, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, dtype=np.uint8)).save(path, quality=95)


def test_clean_attribute_value_rule():
    assert D.clean_attribute_value(" red ") == "red"
    for bad in ("", "  ", None, float("nan"), "ambiguous", "Ambiguous", "red;blue", "red|blue", "red, blue"):
        assert D.clean_attribute_value(bad) == "", bad
    assert D.clean_attribute_value("red", agreement=0.5, min_agreement=2 / 3) == ""
    assert D.clean_attribute_value("red", agreement=1.0, min_agreement=2 / 3) == "red"


def test_loaders_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        D.load_stanford40_actions(tmp_path)
    assert str(tmp_path / "JPEGImages") in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        D.load_imagenet_attributes(tmp_path)
    assert str(tmp_path / "images") in str(err.value)
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        D.load_imagenet_attributes(tmp_path)
    assert str(tmp_path / "attributes.csv") in str(err.value) and "color" in str(err.value)


def test_load_stanford40_actions(tmp_path):
    root = tmp_path / "Stanford40"
    _jpg(root / "JPEGImages" / "applauding_001.jpg", (200, 30, 30))
    _jpg(root / "JPEGImages" / "brushing_teeth_001.jpg", (30, 200, 30))
    _jpg(root / "JPEGImages" / "brushing_teeth_002.jpg", (30, 30, 200))
    splits = root / "ImageSplits"
    splits.mkdir()
    (splits / "actions.txt").write_text("action_name\tnumber_of_images\napplauding\t1\nbrushing_teeth\t2\n")
    (splits / "applauding_train.txt").write_text("applauding_001.jpg\n")
    (splits / "brushing_teeth_train.txt").write_text("brushing_teeth_001.jpg\n")
    (splits / "brushing_teeth_test.txt").write_text("brushing_teeth_002.jpg\n")
    (root / "icc_annotations.csv").write_text(
        "image,action,mood,location\n"
        "applauding_001.jpg,applauding,joyful,concert hall\n"
        "brushing_teeth_001.jpg,brushing_teeth,calm,bathroom\n"
        "brushing_teeth_002.jpg,brushing_teeth,ambiguous,bathroom\n")
    s = D.load_stanford40_actions(root, image_size=8)
    assert s.name == "stanford40" and s.images.shape == (3, 8, 8, 3)
    assert s.class_names == ["applauding", "brushing_teeth"] and s.labels.tolist() == [0, 1, 1]
    assert s.paths == ["JPEGImages/applauding_001.jpg", "JPEGImages/brushing_teeth_001.jpg",
                       "JPEGImages/brushing_teeth_002.jpg"]
    assert s.attributes["action"].tolist() == ["applauding", "brushing_teeth", "brushing_teeth"]
    assert s.attributes["mood"].tolist() == ["joyful", "calm", ""]
    assert s.attributes["location"].tolist() == ["concert hall", "bathroom", "bathroom"]
    assert s.attributes["split"].tolist() == ["train", "train", "test"]
    assert s.images[0, 4, 4, 0] > 150 and s.images[2, 4, 4, 2] > 150 and s.images[2, 4, 4, 0] < 80
    test = D.load_stanford40_actions(root, image_size=8, split="test")
    assert test.paths == ["JPEGImages/brushing_teeth_002.jpg"] and test.labels.tolist() == [1]
    # mood episodes skip the image whose mood is ambiguous
    eps = E.make_conditional_episodes(s, None, ["mood"], [2], 3, root_seed=0, split="test", length_range=(2, 2))
    assert all(sorted(e.indices) == [0, 1] for e in eps)
    # a CSV action that contradicts the file name is an error
    (root / "icc_annotations.csv").write_text("image,action,mood,location\napplauding_001.jpg,running,calm,park\n")
    with pytest.raises(ValueError, match="running"):
        D.load_stanford40_actions(root, image_size=8)


def test_load_stanford40_without_csv_or_splits(tmp_path):
    root = tmp_path / "s40"
    _jpg(root / "JPEGImages" / "rowing_a_boat_010.jpg", (10, 10, 10))
    _jpg(root / "JPEGImages" / "applauding_002.jpg", (10, 10, 10))
    s = D.load_stanford40_actions(root, image_size=4)
    assert s.class_names == ["applauding", "rowing_a_boat"]
    assert set(s.attributes) == {"action"}
    with pytest.raises(FileNotFoundError, match="ImageSplits"):
        D.load_stanford40_actions(root, image_size=4, split="test")


def test_load_imagenet_attributes_filters(tmp_path):
    root = tmp_path / "inat"
    _jpg(root / "images" / "n001" / "n001_1.JPEG", (220, 20, 20))
    _jpg(root / "images" / "n001" / "n001_2.JPEG", (20, 20, 220))
    _jpg(root / "images" / "n002" / "n002_1.JPEG", (20, 200, 20))
    _jpg(root / "images" / "n002" / "n002_9.JPEG", (0, 0, 0))  # not in the table: not loaded
    (root / "attributes.csv").write_text(
        "image,object,color,pattern,shape,texture,color_agreement\n"
        "n001/n001_1.JPEG,goldfish,red,ambiguous,long,smooth,1.0\n"
        "n001_2.JPEG,,blue,striped,,\"shiny;wet\",0.33\n"
        "n002/n002_1.JPEG,frog,green,spotted,round,ambiguous,\n")
    s = D.load_imagenet_attributes(root, image_size=6)
    assert s.name == "imagenet-attributes" and s.images.shape == (3, 6, 6, 3)
    assert s.paths == ["images/n001/n001_1.JPEG", "images/n001/n001_2.JPEG", "images/n002/n002_1.JPEG"]
    a = s.attributes
    assert a["object"].tolist() == ["goldfish", "n001", "frog"]  # empty object falls back to the folder
    assert a["color"].tolist() == ["red", "", "green"]  # agreement 0.33 < 2/3 dropped
    assert a["pattern"].tolist() == ["", "striped", "spotted"]  # ambiguous dropped
    assert a["shape"].tolist() == ["long", "", "round"]
    assert a["texture"].tolist() == ["smooth", "", ""]  # multi-valued and ambiguous dropped
    assert s.class_names == ["frog", "goldfish", "n001"] and s.labels.tolist() == [1, 2, 0]
    loose = D.load_imagenet_attributes(root, image_size=6, min_agreement=0.0)
    assert loose.attributes["color"].tolist() == ["red", "blue", "green"]
    eps = E.make_conditional_episodes(s, None, ["pattern"], [2], 3, root_seed=0, split="test", length_range=(2, 2))
    assert all(sorted(e.indices) == [1, 2] for e in eps)  # image 0 (ambiguous pattern) skipped
    eps = E.make_conditional_episodes(s, ["goldfish", "frog"], ["shape"], [2], 2, root_seed=0, split="test",
                                      length_range=(2, 2))
    assert all(sorted(e.indices) == [0, 2] for e in eps)
