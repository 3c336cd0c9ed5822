"""scripts/validate_dataset.py: every problem of every split at once, a summary table, exit 0 or 1."""

import json

from corpus import UNREADABLE, coco_box, coco_image, write_coco
from scripts_helpers import run_script


def test_every_problem_is_reported_at_once_with_a_table_and_exit_status_1(tmp_path):
    images = [coco_image(i) for i in range(1, 7)] + [coco_image(1, "again.jpg")]
    annotations = [coco_box(1, 1, [30, 20, 20, 20]), coco_box(2, 1, [5, 5, 0, 5]), coco_box(2, 2, [1, 1, 4, 4]),
                   coco_box(3, 77, [1, 1, 4, 4]), coco_box(4, 2, [1, 1, 4, 4], category_id=9)]
    ann_file = write_coco(tmp_path, images, annotations)
    bad_files = {}
    for image_id, kind in zip(range(3, 7), sorted(UNREADABLE)):
        path = tmp_path / "train" / f"{image_id}.jpg"
        path.unlink()
        bad_files[str(UNREADABLE[kind][0](path))] = UNREADABLE[kind][1]
    write_coco(tmp_path, [coco_image(1)], [], split="val")
    (tmp_path / "val" / "1.jpg").write_bytes(b"")
    (tmp_path / "clean").mkdir()
    write_coco(tmp_path / "clean", [coco_image(1)], [coco_box(1, 1, [1, 1, 4, 4])])

    result = run_script("validate_dataset.py", "--data_dir", str(tmp_path), "--output", str(tmp_path / "r.json"),
                        check=False)

    assert result.returncode == 1, result.stderr
    out = result.stdout
    # The rejected category does not hide the other problems, as training's first error would.
    assert f"[train] {ann_file}: annotations[4].category_id: category_id 9 is not listed" in out
    assert f"[train] {ann_file}: annotations[2].id: id 2 is also an earlier annotation's id" in out
    assert f"[train] {ann_file}: annotations[3].image_id: image_id 77 is not listed in 'images' (dropped)" in out
    assert f"[train] {tmp_path / 'train' / '1.jpg'}: boxes[0]: [30, 20, 20, 20] extends outside" in out
    assert f"[train] {tmp_path / 'train' / '1.jpg'}: boxes[1]: [5, 5, 0, 5] has no area" in out
    assert f"[train] {tmp_path / 'train' / 'again.jpg'}: image_id: image id 1 is listed again" in out
    for path, cause in bad_files.items():  # every image fully decoded, truncated included
        assert f"[train] {path}: image: " in out and cause in out
    assert f"[val] {tmp_path / 'val' / '1.jpg'}: image: the file is empty (0 bytes) (skipped)" in out
    table = out[out.index("split "):].splitlines()
    assert table[0].split() == ["split", "clipped", "dropped", "skipped", "rejected", "total"]
    assert table[1].split() == ["train", "1", "4", "4", "1", "10"] and table[2].split() == ["val", "0", "0", "1", "0", "1"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["splits"]["train"]["counts"] == {"clipped": 1, "dropped": 4, "skipped": 4, "rejected": 1}
    assert {"file", "field", "message", "action"} == set(report["splits"]["val"]["problems"][0])

    clean = run_script("validate_dataset.py", "--data_dir", str(tmp_path / "clean"), check=False)
    assert clean.returncode == 0 and "is clean" in clean.stdout

    missing = run_script("validate_dataset.py", "--data_dir", str(tmp_path), "--split", "test", check=False)
    assert missing.returncode == 2 and "Available splits: train, val." in missing.stderr
