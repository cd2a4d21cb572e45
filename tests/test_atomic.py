"""All-or-nothing writes: a reader sees the old artifact or the new one, never a half, and an
interrupted write leaves nothing behind."""

from __future__ import annotations

import pytest

from wizardcoder_tpu.inference.atomic import new_folder, replacing, write_text


def test_replacing_puts_the_new_content_in_place_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with replacing(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not yet: readers still see the whole old file
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = write_text(tmp_path / "manifest.json", "{}\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(target) as tmp:
            tmp.write_text("{\"half")
            raise RuntimeError("disk full")
    assert target.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_new_folder_appears_whole_and_a_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "graph"
    with pytest.raises(ValueError):
        with new_folder(target) as work:
            (work / "decoder.onnx").write_bytes(b"x")
            raise ValueError("build failed")
    assert list(tmp_path.iterdir()) == []
    with new_folder(target) as work:
        (work / "decoder.onnx").write_bytes(b"x")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["decoder.onnx"]


def test_new_folder_keeps_the_copy_another_process_finished_first(tmp_path):
    target = tmp_path / "graph"
    with new_folder(target) as work:
        (work / "decoder.onnx").write_bytes(b"ours")
        target.mkdir()
        (target / "decoder.onnx").write_bytes(b"theirs")
        (target / "more").write_bytes(b"")  # a non-empty folder: the rename cannot replace it
    assert (target / "decoder.onnx").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph"]
