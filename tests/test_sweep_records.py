"""Tests for sweep.records: atomic writes, strict JSON, stable hashes, the metrics schema."""

import json
import re
import subprocess

import pytest

from sweep.errors import ConfigError
from sweep.records import METRIC_KEYS, RunRecord, code_version, config_hash


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


def _row(step: int) -> dict:
    return {key: step for key in METRIC_KEYS}


def test_resume_keeps_rows_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.start("a: 1\n")
    for step in (0, 1, 3, 7):
        record.append_metrics(_row(step))
    kept_bytes = record.metrics_path.read_text().splitlines(keepends=True)[:3]
    with record.metrics_path.open("a") as handle:
        handle.write('{"step": 9, "tok')  # a crash mid-append
    record.write_summary({"status": "failed"})
    assert record.resume("a: 2\n", step=5) == 3
    # The kept rows are the same bytes; the file ends with a whole line; the summary is gone.
    assert record.metrics_path.read_text() == "".join(kept_bytes)
    assert record.config_path.read_text() == "a: 2\n"
    assert record.read_summary() is None
    assert sorted(p.name for p in record.run_dir.iterdir()) == ["config.yaml", "metrics.jsonl"]
    # Resuming again at the same step changes nothing; appends continue after the last row.
    assert record.resume("a: 2\n", step=5) == 3
    record.append_metrics(_row(8))
    assert [json.loads(line)["step"] for line in record.metrics_path.read_text().splitlines()] == [
        0, 1, 3, 8]


def test_resume_refuses_a_corrupt_row_before_the_last(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.start("a: 1\n")
    record.append_metrics(_row(0))
    with record.metrics_path.open("a") as handle:
        handle.write("garbage\n")
    record.append_metrics(_row(1))
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 2 is not a metrics row: delete"):
        record.resume("a: 1\n", step=1)


def test_code_version_tells_differently_edited_checkouts_apart(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    clean = code_version(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{12}", clean)
    (tmp_path / "a.py").write_text("x = 2\n")
    first = code_version(tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    second = code_version(tmp_path)
    assert re.fullmatch(clean + r"-dirty-[0-9a-f]{8}", first)
    assert second.startswith(clean + "-dirty-") and second != first
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == first  # the same edit, the same version
    assert code_version(tmp_path / "nowhere") == "unknown"
