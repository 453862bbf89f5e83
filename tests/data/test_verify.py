"""`metashot data verify` and its backend verify_all: ok / missing / bad per dataset, SHA256SUMS."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from metashot.cli import main
from metashot.data.verify import TEXT_FILES, verify_all

OMNIGLOT_PARTS = [
    "images_background", "images_evaluation", "images_background_small1", "images_background_small2"
]


def _cli(capsys: pytest.CaptureFixture[str], root: Path) -> tuple[int, dict[str, dict[str, str]]]:
    rc = main(["data", "verify", "--root", str(root), "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_shared_data_all_ok(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _cli(capsys, data_root)
    bad = {k: v for k, v in report.items() if v["status"] != "ok"}
    assert not bad, bad
    assert rc == 0
    for part in OMNIGLOT_PARTS:
        assert f"omniglot/{part}" in report and "sha256 ok" in report[f"omniglot/{part}"]["detail"]
    assert "964 characters, 19280 images" in report["omniglot/images_background"]["detail"]
    assert "train 64x60, val 16x60, test 20x60" in report["mini_imagenet"]["detail"]
    assert "1028/172/423" in report["omniglot/vinyals_split"]["detail"]
    assert "51 classes, 4129 images" in report["flowers102"]["detail"]
    assert "sha256 ok" in report["flowers102"]["detail"]
    assert report["SHA256SUMS"]["detail"].startswith("7 files match")
    assert {f"text/{n}" for n in TEXT_FILES} <= set(report)


def test_empty_root_is_all_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _cli(capsys, tmp_path)
    assert rc == 0, "missing data is not an error"
    assert {v["status"] for v in report.values()} == {"missing"}
    assert str(tmp_path / "omniglot") in report["omniglot/images_background"]["detail"]
    assert "licence" in report["mini_imagenet"]["detail"]
    main(["data", "verify", "--root", str(tmp_path)])  # the plain-text table
    out = capsys.readouterr().out
    assert "omniglot/images_evaluation" in out and "missing" in out


def _fake_small(part: str, chars: int) -> bytes:
    buf, png = io.BytesIO(), io.BytesIO()
    Image.new("1", (105, 105), 1).save(png, format="PNG")
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for c in range(1, chars + 1):
            for d in range(1, 21):
                zf.writestr(f"{part}/Latin/character{c:02d}/{c:04d}_{d:02d}.png", png.getvalue())
    return buf.getvalue()


def test_bad_files_are_reported_with_numbers(tmp_path: Path, data_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    omni = tmp_path / "omniglot"
    omni.mkdir()
    (omni / "images_background.zip").write_bytes(b"not a zip")
    (omni / "images_background_small1.zip").write_bytes(_fake_small("images_background_small1", 3))
    data = bytearray(_fake_small("images_background_small2", 1))
    member_at = data.find(b"IHDR")  # inside the first stored PNG: flip one byte -> CRC mismatch
    data[member_at] ^= 0xFF
    (omni / "images_background_small2.zip").write_bytes(bytes(data))
    shutil.copy(data_root / "omniglot" / "all_runs.zip", omni / "all_runs.zip")
    text = tmp_path / "text" / "hwu64" / "processed_jianguoz"
    for s in ("train", "valid", "test"):
        (text / s).mkdir(parents=True)
        (text / s / "seq.in").write_text("hi\nbye\n")
        (text / s / "label").write_text("greet\nfarewell\n" if s != "test" else "greet\n")
    (tmp_path / "text" / "banking77").mkdir()
    (tmp_path / "text" / "banking77" / "train.csv").write_text("text,category\nx,y\n")
    run_sha = hashlib.sha256((omni / "all_runs.zip").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{run_sha}  omniglot/all_runs.zip\n"
                                         f"{'0' * 64}  omniglot/images_background_small1.zip\n"
                                         f"{'1' * 64}  omniglot/nothing.zip\n")
    report = verify_all(tmp_path)
    status = {k: v["status"] for k, v in report.items()}
    detail = {k: v["detail"] for k, v in report.items()}
    assert status["omniglot/images_background"] == "bad" and "not a readable zip" in detail[
        "omniglot/images_background"]
    assert status["omniglot/images_background_small1"] == "bad"
    assert "1 alphabets / 3 characters / 60 images, expected 5 / 136 / 2720" in detail[
        "omniglot/images_background_small1"]
    assert "sha256 bad" in detail["omniglot/images_background_small1"]
    assert status["omniglot/images_background_small2"] == "bad" and "CRC" in detail[
        "omniglot/images_background_small2"]
    assert status["omniglot/images_evaluation"] == "missing"
    assert status["omniglot/all_runs"] == "ok" and "sha256 ok" in detail["omniglot/all_runs"]
    assert status["omniglot/vinyals_split"] == "missing"
    assert status["text/hwu64"] == "bad" and "seq.in has 2 lines but label has 1" in detail["text/hwu64"]
    assert status["text/banking77"] == "bad" and "test.csv" in detail["text/banking77"]
    assert status["text/clinc150"] == "missing"
    assert status["SHA256SUMS"] == "bad"
    assert "2 of 3 files fail" in detail["SHA256SUMS"]
    assert "omniglot/nothing.zip missing" in detail["SHA256SUMS"]
    rc = main(["data", "verify", "--root", str(tmp_path), "--json"])
    capsys.readouterr()
    assert rc == 1, "any bad entry makes the command fail"


def test_extracted_folders_and_mini_imagenet_problems(tmp_path: Path, data_root: Path) -> None:
    omni = tmp_path / "omniglot"
    with zipfile.ZipFile(data_root / "omniglot" / "all_runs.zip") as zf:
        zf.extractall(omni / "all_runs")
    with zipfile.ZipFile(data_root / "omniglot" / "images_background_small1.zip") as zf:
        zf.extractall(omni)
    (omni / "all_runs" / "run07" / "training" / "class03.png").unlink()
    mini = tmp_path / "mini_imagenet"
    (mini / "images").mkdir(parents=True)
    (mini / "train.csv").write_text("filename,label\na.jpg,n01\n")
    report = verify_all(tmp_path)
    assert report["omniglot/images_background_small1"]["status"] == "ok"
    assert report["omniglot/images_background_small1"]["detail"].startswith("folder: 5 alphabets, 136")
    assert report["omniglot/all_runs"] == {
        "status": "bad",
        "detail": f"{omni / 'all_runs'}: run07/training/class03.png (listed in run07/class_labels.txt) "
                  f"is missing",
    }
    assert report["mini_imagenet"]["status"] == "bad"
    assert "images/a.jpg (listed in train.csv) is missing" in report["mini_imagenet"]["detail"]
