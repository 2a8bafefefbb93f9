"""Measurement records: stamped JSON lines appended, read back, bad lines named."""

import json

import pytest

from swcm.records import append_record, read_records, stamp


def test_append_and_read_back(tmp_path):
    first = append_record("train", {"steps_per_s": 2.0}, precision="bf16", directory=tmp_path)
    append_record("train", {"steps_per_s": 3.0}, precision="fp32", directory=tmp_path)
    assert first == tmp_path / "train.jsonl"
    records = read_records("train", directory=tmp_path)
    assert [r["figures"]["steps_per_s"] for r in records] == [2.0, 3.0]
    assert [r["precision"] for r in records] == ["bf16", "fp32"]
    for record in records:
        assert record["name"] == "train" and record["cpu"] and record["date"].endswith("+00:00")
        assert "torch" in record["versions"]
    assert read_records("absent", directory=tmp_path) == []


def test_stamp_names_the_checkout_commit():
    record = stamp()
    # the test suite runs from a checkout (editable install), so the commit is known
    assert record["commit"] is None or len(record["commit"]) == 12


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "demo.jsonl"
    path.write_text(json.dumps({"name": "demo"}) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"demo.jsonl:2: a record must be a JSON object"):
        read_records("demo", directory=tmp_path)
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"demo.jsonl:1: not JSON"):
        read_records("demo", directory=tmp_path)
