"""Tests for sweep.records: atomic writes, strict JSON, stable hashes, the metrics schema."""

import json

import pytest

from sweep.records import METRIC_KEYS, RunRecord, config_hash


def test_failed_summary_write_keeps_the_old_one_and_no_temp_file(tmp_path, monkeypatch):
    record = RunRecord(tmp_path)
    record.write_summary({"status": "failed"})
    target = record.summary_path
    old = target.read_text()

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        record.write_summary({"status": "finished"})
    assert target.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_rows_are_strict_json_with_every_key(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.start("a: 1\n")
    row = {key: 1 for key in METRIC_KEYS} | {"train_loss": float("nan"), "mfu": None}
    record.append_metrics(row)
    with pytest.raises(KeyError):
        record.append_metrics({"step": 1})
    lines = record.metrics_path.read_text().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert list(parsed) == list(METRIC_KEYS)
    assert parsed["train_loss"] is None


def test_summary_roundtrip_and_restart_truncates(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.start("a: 1\n")
    record.write_summary({"status": "finished", "val_loss": 1.5, "nested": {"x": float("inf")}})
    summary = record.read_summary()
    assert summary == {
        "schema_version": 1,
        "status": "finished",
        "val_loss": 1.5,
        "nested": {"x": None},
    }
    record.start("a: 2\n")
    assert record.read_summary() is None
    assert record.metrics_path.read_text() == ""


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash(
        {"b": {"d": 3, "c": 2}, "a": 1}
    )
    assert config_hash({"a": 1}) != config_hash({"a": 2})
