"""Loaders for the paper's conditional data, read from a user's own copy (nothing is downloaded).

The paper's conditional image clustering (Table 3) uses ImageNet-with-Attributes (conditions
object, color, pattern, shape, texture) and Stanford 40 Actions (action, mood, location).
Both loaders store one string per image and attribute in ``ImageSet.attributes``; the empty
string means "no usable value" (see :func:`clean_attribute_value`).
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..validation import check_choice, check_int
from .images import IMAGE_EXTENSIONS, ImageSet, is_missing_value


#: Conditions of ImageNet-with-Attributes and of Stanford 40 Actions (paper, Section 5).
IMAGENET_ATTRIBUTE_CONDITIONS = ("object", "color", "pattern", "shape", "texture")
STANFORD40_CONDITIONS = ("action", "mood", "location")
#: A value containing one of these separators lists several values, so it is not a single value.
MULTI_VALUE_SEPARATORS = (";", "|", ",")


def clean_attribute_value(value: Any, agreement: float | None = None, min_agreement: float = 0.0) -> str:
    """The filtering rule for annotated attributes: the stripped value if it is ONE usable value, else "".

    A value is dropped (returned as "") when it is empty/None/NaN, ``ambiguous`` (any case), lists
    several values (contains ``;``, ``|`` or ``,``), or its annotator ``agreement`` (0..1, when
    given) is below ``min_agreement``. Images with "" are skipped by
    :func:`~icc_utils.vision.episodes.make_conditional_episodes` for that condition only.
    """
    if is_missing_value(value):
        return ""
    text = str(value).strip()
    if any(sep in text for sep in MULTI_VALUE_SEPARATORS):
        return ""
    if agreement is not None and float(agreement) < float(min_agreement):
        return ""
    return text


def _read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; it has {columns}")
    return columns, rows


def _load_resized(path: Path, image_size: int) -> np.ndarray | None:
    """One image as uint8 RGB ``image_size x image_size`` (bilinear), or None with a warning if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (image_size, image_size))  # fast JPEG decoding at reduced scale; no-op otherwise
            im = im.convert("RGB").resize((image_size, image_size), resample=Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as exc:
        warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=3)
        return None
    return np.asarray(im, dtype=np.uint8)


def _stanford40_action(file_name: str) -> str:
    stem = Path(file_name).stem
    if "_" not in stem:
        raise ValueError(f"{file_name!r} is not a Stanford 40 Actions file name (<action>_<number>.jpg)")
    return stem.rsplit("_", 1)[0]


def load_stanford40_actions(root: str | Path, image_size: int = 64, split: str | None = None,
                            annotations: str = "icc_annotations.csv") -> ImageSet:
    """Load Stanford 40 Actions (Yao et al., 2011) for conditional clustering (no download).

    Expected layout (the official release, http://vision.stanford.edu/Datasets/40actions.html):
    ``root/JPEGImages/<action>_<nnn>.jpg`` (the action is the file name without its last
    ``_<number>``, e.g. ``applauding_001.jpg`` -> ``applauding``); optionally
    ``root/ImageSplits/actions.txt`` (header line, then ``<action>\\t<count>``; gives the class
    list) and ``root/ImageSplits/<action>_train.txt`` / ``<action>_test.txt`` (one file name a line;
    they set ``attributes["split"]``, and ``split="train"|"test"`` loads only those images).

    Mood and location labels are NOT part of the original release (they were added for
    text-criterion clustering, IC|TC, Kwon et al. 2024, and reused by the paper). Put them in
    ``root/<annotations>`` (default ``icc_annotations.csv``), a CSV with columns
    ``image,action,mood,location`` (``image`` = file name in ``JPEGImages``; extra columns are kept
    too). Each value goes through :func:`clean_attribute_value` (empty/ambiguous/multi-valued -> "",
    skipped for that condition); images absent from the CSV get "". A non-empty CSV ``action``
    must match the file name's action. ``labels`` index the actions; ``attributes["action"]`` is
    always set; ``paths`` are ``JPEGImages/<file>``; images are resized to ``image_size`` square.
    """
    check_int("image_size", image_size, 1)
    if split is not None:
        check_choice("split", split, ["train", "test"])
    root = Path(root)
    jpeg_dir = root / "JPEGImages"
    if not jpeg_dir.is_dir():
        raise FileNotFoundError(f"Stanford 40 Actions images not found: expected {jpeg_dir} holding "
                                f"<action>_<nnn>.jpg files from the official release "
                                f"(http://vision.stanford.edu/Datasets/40actions.html); nothing is downloaded")
    files = sorted(p.name for p in jpeg_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{jpeg_dir} holds no images (expected <action>_<nnn>.jpg files)")
    split_dir = root / "ImageSplits"
    split_of: dict[str, str] = {}
    if split_dir.is_dir():
        for which in ("train", "test"):
            for lst in sorted(split_dir.glob(f"*_{which}.txt")):
                for line in lst.read_text(encoding="utf-8").split():
                    split_of[line.strip()] = which
    if split is not None:
        if not split_of:
            raise FileNotFoundError(f"split={split!r} needs the lists {split_dir}/<action>_{split}.txt "
                                    f"of the official release")
        files = [f for f in files if split_of.get(f) == split]
        if not files:
            raise ValueError(f"no image of {jpeg_dir} is listed in {split_dir}/*_{split}.txt")
    actions_txt = split_dir / "actions.txt"
    if actions_txt.is_file():
        lines = [ln.split()[0] for ln in actions_txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        class_names = [a for a in lines if a != "action_name"]
    else:
        class_names = sorted({_stanford40_action(f) for f in files})
    extra: dict[str, dict[str, str]] = {}
    extra_cols: list[str] = []
    csv_path = root / annotations
    if csv_path.is_file():
        columns, rows = _read_csv_rows(csv_path, ["image"])
        extra_cols = [c for c in columns if c != "image"]
        for row in rows:
            extra[Path(str(row["image"]).strip()).name] = {c: clean_attribute_value(row.get(c)) for c in extra_cols}
    images, labels, paths, kept = [], [], [], []
    for f in files:
        action = _stanford40_action(f)
        if action not in class_names:
            raise ValueError(f"{f}: action {action!r} is not in {actions_txt} ({len(class_names)} actions)")
        given = extra.get(f, {}).get("action", "")
        if given and given != action:
            raise ValueError(f"{csv_path}: image {f} has action {given!r} but its file name says {action!r}")
        arr = _load_resized(jpeg_dir / f, image_size)
        if arr is None:
            continue
        images.append(arr)
        labels.append(class_names.index(action))
        paths.append(f"JPEGImages/{f}")
        kept.append(f)
    if not images:
        raise ValueError(f"{jpeg_dir} has no readable images")
    attributes = {"action": np.array([_stanford40_action(f) for f in kept])}
    if split_of:
        attributes["split"] = np.array([split_of.get(f, "") for f in kept])
    for col in extra_cols:
        if col != "action":
            attributes[col] = np.array([extra.get(f, {}).get(col, "") for f in kept])
    return ImageSet(name="stanford40", images=np.stack(images), labels=np.asarray(labels, dtype=np.int64),
                    class_names=class_names, paths=paths, attributes=attributes)


def load_imagenet_attributes(root: str | Path, image_size: int = 64, min_agreement: float = 2 / 3,
                             conditions: Sequence[str] = IMAGENET_ATTRIBUTE_CONDITIONS) -> ImageSet:
    """Load ImageNet-with-Attributes for conditional clustering (no download; the paper's files are not public).

    Expected layout: images in ImageFolder form ``root/images/<wnid>/<file>`` and an attribute
    table ``root/attributes.csv`` with columns ``image,object,color,pattern,shape,texture``
    (``image`` = path relative to ``root/images``, ``<wnid>/<file>``, or a bare file name that is
    unique under it). Only images listed in the table are loaded (one row each).

    Filtering rule (per image and condition, :func:`clean_attribute_value`): a value is kept only
    if it is a single, non-empty value that is not ``ambiguous`` (a value listing several with
    ``;``, ``|`` or ``,`` is dropped) and, when the table has a column ``<condition>_agreement``
    (fraction of annotators agreeing, 0..1), that fraction is at least ``min_agreement`` (default
    2/3, e.g. two of three annotators). A dropped value is stored as "" and the image is skipped
    for THAT condition only by :func:`~icc_utils.vision.episodes.make_conditional_episodes`. The ``object`` falls back to the
    image's folder (``wnid``) when its cell is dropped, since the ImageNet class is always known;
    ``labels`` index the sorted objects. Conditions missing from the table are all "".
    """
    check_int("image_size", image_size, 1)
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ValueError(f"min_agreement={min_agreement!r} is out of range; it must be in [0, 1]")
    root = Path(root)
    image_dir, table = root / "images", root / "attributes.csv"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ImageNet-with-Attributes images not found: expected {image_dir}/<wnid>/<file> "
                                f"(ImageFolder layout); nothing is downloaded")
    if not table.is_file():
        raise FileNotFoundError(f"ImageNet-with-Attributes table not found: expected {table} with columns "
                                f"image,{','.join(IMAGENET_ATTRIBUTE_CONDITIONS)}")
    columns, rows = _read_csv_rows(table, ["image"])
    if not any(c in columns for c in conditions):
        raise ValueError(f"{table} has none of the condition columns {list(conditions)}; it has {columns}")
    by_rel: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for p in sorted(image_dir.glob("*/*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            by_rel[f"{p.parent.name}/{p.name}"] = p
            by_name.setdefault(p.name, []).append(p)
    images, paths = [], []
    values: dict[str, list[str]] = {c: [] for c in conditions}
    seen: set[Path] = set()
    for row in rows:
        ref = str(row.get("image") or "").strip().replace("\\", "/")
        path = by_rel.get(ref)
        if path is None and len(by_name.get(Path(ref).name, [])) == 1:
            path = by_name[Path(ref).name][0]
        if path is None:
            warnings.warn(f"{table}: image {ref!r} is not (uniquely) found under {image_dir}; skipped", stacklevel=2)
            continue
        if path in seen:
            raise ValueError(f"{table}: image {ref!r} is listed twice")
        seen.add(path)
        arr = _load_resized(path, image_size)
        if arr is None:
            continue
        images.append(arr)
        paths.append(f"images/{path.parent.name}/{path.name}")
        for c in conditions:
            agree = row.get(f"{c}_agreement")
            agree = None if agree is None or str(agree).strip() == "" else float(agree)
            v = clean_attribute_value(row.get(c), agree, min_agreement)
            if c == "object" and v == "":
                v = path.parent.name
            values[c].append(v)
    if not images:
        raise ValueError(f"no image listed in {table} could be loaded from {image_dir}")
    attributes = {c: np.array(v) for c, v in values.items()}
    if "object" in attributes:
        objects = attributes["object"]
    else:
        objects = np.array([p.split("/")[1] for p in paths])
    class_names = sorted(set(objects.tolist()))
    labels = np.array([class_names.index(o) for o in objects], dtype=np.int64)
    return ImageSet(name="imagenet-attributes", images=np.stack(images), labels=labels, class_names=class_names,
                    paths=paths, attributes=attributes)
