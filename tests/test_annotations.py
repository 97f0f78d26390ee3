"""Pairing images with annotation files, labelmaps and splits (projects/annotations.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projects.annotations import (
    AnnotationError,
    AnnotationFinder,
    candidate_paths,
    in_neither,
    is_yolo,
    load_labelmap,
    split_for,
)

VOC = """<annotation><filename>{name}</filename><size><width>24</width><height>16</height></size>
<object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>
</annotation>"""


def write(path: Path, text: str | bytes = b"image") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def coco(*names: str, boxes: dict[str, int] | None = None) -> str:
    boxes = boxes or {}
    images = [{"id": i + 1, "file_name": name, "width": 24, "height": 16} for i, name in enumerate(names)]
    annotations = [
        {"id": 100 + i, "image_id": i + 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}
        for i, name in enumerate(names)
        for _ in range(boxes.get(name, 1))
    ]
    return json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]})


# -- splits and neither -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, split",
    [
        ("train/a.jpg", "train"),
        ("valid/images/a.jpg", "valid"),
        ("cams/north/test/a.jpg", "test"),
        ("images/Valid/a.jpg", "valid"),
        ("train/extra/valid/a.jpg", "valid"),  # the innermost split folder wins
    ],
)
def test_split_comes_from_a_split_folder_anywhere_in_the_path(path, split):
    assert split_for(path) == split


def test_split_defaults_when_no_folder_names_one():
    assert split_for("images/a.jpg") == "train"
    assert split_for("images/a.jpg", default="test") == "test"
    assert split_for("valid.jpg", default="test") == "test"  # a file name is not a folder
    assert split_for("training/a.jpg", default="test") == "test"


def test_neither_folder_is_recognised_only_as_a_folder():
    assert in_neither("neither/a.jpg")
    assert in_neither("train/Neither/sub/a.jpg")
    assert not in_neither("neither.jpg")
    assert not in_neither("neitherland/a.jpg")


# -- labelmaps ----------------------------------------------------------------------------------
def test_labelmap_from_data_yaml_names_list(tmp_path):
    path = write(tmp_path / "data.yaml", "train: ../train/images\nnc: 2\nnames: ['cat', 'dog']\n")
    assert load_labelmap(str(path)) == {0: "cat", 1: "dog"}


def test_labelmap_from_data_yaml_names_mapping(tmp_path):
    path = write(tmp_path / "data.yaml", "names:\n  0: cat\n  2: bird\n")
    assert load_labelmap(str(path)) == {0: "cat", 2: "bird"}


def test_labelmap_from_classes_txt_skips_blank_lines(tmp_path):
    path = write(tmp_path / "classes.txt", "cat\n\ndog\n")
    assert load_labelmap(str(path)) == {0: "cat", 1: "dog"}


def test_data_yaml_without_names_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path / "data.yaml", "nc: 2\n")
    with pytest.raises(AnnotationError, match="data.yaml has no `names`"):
        load_labelmap(str(path))


def test_labelmap_is_searched_upward_but_not_above_the_root(tmp_path):
    write(tmp_path / "data.yaml", "names: [outside]\n")
    root = tmp_path / "dataset"
    write(root / "classes.txt", "cat\n")
    write(root / "train" / "data.yaml", "names: [nearest]\n")
    finder = AnnotationFinder(str(root))
    assert finder.labelmap_for(str(root / "train" / "images")) == {0: "nearest"}
    assert finder.labelmap_for(str(root / "valid" / "images")) == {0: "cat"}
    assert AnnotationFinder(str(root / "valid")).labelmap_for(str(root / "valid" / "images")) is None


# -- pairing ------------------------------------------------------------------------------------
def test_candidates_include_the_labels_folder_of_both_yolo_layouts():
    roboflow_export = candidate_paths("/d/train/images/a.jpg")
    ultralytics = candidate_paths("/d/images/train/a.jpg")
    assert roboflow_export[:3] == ["/d/train/images/a.txt", "/d/train/images/a.xml", "/d/train/images/a.json"]
    assert "/d/train/labels/a.txt" in roboflow_export
    assert "/d/labels/train/a.txt" in ultralytics
    assert "/d/VOC/Annotations/a.xml" in candidate_paths("/d/VOC/JPEGImages/a.jpg")


def test_yolo_next_to_the_image_pairs_by_stem_with_classes_txt(tmp_path):
    image = write(tmp_path / "shots" / "cam.1.jpg")
    write(tmp_path / "shots" / "cam.1.txt", "0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.05 0.05\n")
    write(tmp_path / "shots" / "cam.txt", "0 0.9 0.9 0.1 0.1\n")
    write(tmp_path / "classes.txt", "cat\ndog\n")
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None
    assert (annotation.format, annotation.name) == ("yolo", "cam.1.txt")
    assert annotation.text.startswith("0 0.5 0.5")
    assert annotation.labelmap == {0: "cat", 1: "dog"}


def test_yolo_in_sibling_labels_folder_uses_data_yaml_at_the_root(tmp_path):
    image = write(tmp_path / "train" / "images" / "a.jpg")
    write(tmp_path / "train" / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "data.yaml", "names: [widget]\n")
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and annotation.format == "yolo"
    assert annotation.source == str(tmp_path / "train" / "labels" / "a.txt")
    assert annotation.labelmap == {0: "widget"}


def test_classes_txt_in_the_labels_folder_wins_over_the_image_side(tmp_path):
    image = write(tmp_path / "images" / "train" / "a.jpg")
    write(tmp_path / "labels" / "train" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "labels" / "train" / "classes.txt", "from-labels\n")
    write(tmp_path / "images" / "train" / "classes.txt", "from-images\n")
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and annotation.labelmap == {0: "from-labels"}


def test_yolo_without_any_labelmap_still_pairs(tmp_path):
    image = write(tmp_path / "a.png")
    write(tmp_path / "a.txt", "")
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and annotation.format == "yolo" and annotation.labelmap is None


def test_empty_yolo_file_is_an_annotation_of_no_objects():
    assert is_yolo("")
    assert is_yolo("3 0.1 0.2 0.3 0.4 0.5 0.6\n")  # a segmentation polygon
    assert not is_yolo("a cat on a mat\n")


def test_voc_xml_pairs_by_stem(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "a.xml", VOC.format(name="a.jpg"))
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and (annotation.format, annotation.name) == ("voc", "a.xml")
    assert annotation.labelmap is None


def test_voc_layout_with_annotations_folder(tmp_path):
    image = write(tmp_path / "VOC2012" / "JPEGImages" / "2008_000001.jpg")
    write(tmp_path / "VOC2012" / "Annotations" / "2008_000001.xml", VOC.format(name="2008_000001.jpg"))
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and annotation.format == "voc"


def test_coco_json_per_image_is_sent_whole(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "a.json", coco("a.jpg"))
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and (annotation.format, annotation.name) == ("coco", "a.json")
    assert json.loads(annotation.text)["images"][0]["file_name"] == "a.jpg"


def test_folder_coco_file_is_cut_down_to_the_image(tmp_path):
    image = write(tmp_path / "train" / "b.jpg")
    write(tmp_path / "train" / "_annotations.coco.json", coco("a.jpg", "b.jpg", "c.jpg", boxes={"b.jpg": 2}))
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None and annotation.format == "coco"
    document = json.loads(annotation.text)
    assert [i["file_name"] for i in document["images"]] == ["b.jpg"]
    assert [a["image_id"] for a in document["annotations"]] == [2, 2]
    assert document["categories"] == [{"id": 1, "name": "cat"}]


def test_folder_coco_image_without_objects_gets_a_placeholder_roboflow_recognises(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "_annotations.coco.json", coco("a.jpg", boxes={"a.jpg": 0}))
    annotation = AnnotationFinder(str(tmp_path)).find(str(image))
    assert annotation is not None
    assert [a["image_id"] for a in json.loads(annotation.text)["annotations"]] == [999999999]


def test_image_missing_from_folder_coco_file_has_no_annotation(tmp_path):
    image = write(tmp_path / "z.jpg")
    write(tmp_path / "_annotations.coco.json", coco("a.jpg"))
    assert AnnotationFinder(str(tmp_path)).find(str(image)) is None


def test_files_that_are_not_annotations_are_ignored(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "a.txt", "caption: a cat on a mat\n")
    write(tmp_path / "a.xml", "<metadata><camera>north</camera></metadata>")
    write(tmp_path / "a.json", json.dumps({"exposure": 0.01}))
    assert AnnotationFinder(str(tmp_path)).find(str(image)) is None


def test_image_without_any_annotation_file(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "b.txt", "0 0.5 0.5 0.2 0.2\n")
    assert AnnotationFinder(str(tmp_path)).find(str(image)) is None


def test_broken_labelmap_is_an_error_not_silently_numbered_classes(tmp_path):
    image = write(tmp_path / "a.jpg")
    write(tmp_path / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "data.yaml", "names: [cat\n")
    finder = AnnotationFinder(str(tmp_path))
    for _ in range(2):  # also when the folder's answer is cached
        with pytest.raises(AnnotationError, match="data.yaml is not valid YAML"):
            finder.find(str(image))
