"""Tests for data.bench: flags are checked in one line before any work, the end-to-end prepare
step runs by default (100 MB, as README documents) and --no-prepare skips it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import data.bench
from data.bench import main
from tests.test_data_text import isolate_hf

TINY = ["--text-mb", "0.05", "--vocab-size", "300"]  # 50 documents: a BPE in well under a second


@pytest.fixture(autouse=True)
def hf_env(tmp_path_factory, monkeypatch):
    """The prepare child reads through `datasets`: keep it off ~/.cache and the network."""
    isolate_hf(monkeypatch, tmp_path_factory.getbasetemp() / "hf_home")


@pytest.fixture
def no_prepare_step(monkeypatch):
    """Stand-ins for the corpus writer and the prepare child that record what they were asked."""
    asked: dict[str, float] = {}

    def write_jsonl(directory, docs, total_mb, file_mb=64.0):
        asked["corpus_mb"] = total_mb
        return int(total_mb * 1e6)

    def prepare_child(corpus, tokenizer, data_dir):
        asked["prepared"] = True
        return {"tokens": 1000, "bytes": 4000, "wall_s": 1.0, "peak_rss_mb": 300.0,
                "tokens_per_s": 1000.0}

    monkeypatch.setattr(data.bench, "write_jsonl", write_jsonl)
    monkeypatch.setattr(data.bench, "prepare_child", prepare_child)
    return asked


@pytest.mark.parametrize(("argv", "message"), [
    (["--text-mb", "0"], "argument --text-mb: '0' is not a positive number of MB: give e.g. "
                         "--text-mb 20"),
    (["--corpus-mb", "-1"], "argument --corpus-mb: '-1' is not a positive number of MB: give "
                            "e.g. --corpus-mb 200"),
    (["--corpus-mb", "0"], "argument --corpus-mb: '0' is not a positive number of MB"),
    (["--corpus-mb", "nan"], "argument --corpus-mb: 'nan' is not a positive number of MB"),
    (["--corpus-mb", "inf"], "argument --corpus-mb: 'inf' is not a positive number of MB"),
    (["--corpus-mb", "lots"], "argument --corpus-mb: 'lots' is not a positive number of MB"),
    (["--doc-chars", "0"], "argument --doc-chars: '0' is not a positive whole number of "
                           "characters: give e.g. --doc-chars 1000"),
    (["--doc-chars", "1.5"], "argument --doc-chars: '1.5' is not a positive whole number"),
    (["--vocab-size", "257"], "argument --vocab-size: '257' is not a whole number of at least 258"),
    (["--batch-bytes", "-5"], "argument --batch-bytes: '-5' is not a positive whole number of "
                              "bytes: give e.g. --batch-bytes 1000000"),
    (["--text-mb", "0.0005"], "--text-mb 0.0005 is less than one --doc-chars 1000 document: "
                              "give e.g. --text-mb 20"),
    (["--no-prepare", "--corpus-mb", "200"], "--corpus-mb is for the prepare step, which "
                                             "--no-prepare skips: drop one of them"),
])
def test_bad_flags_are_one_line_before_any_work(monkeypatch, capsys, no_prepare_step, argv,
                                                message):
    monkeypatch.setattr(data.bench, "documents", lambda *a: pytest.fail("read the corpus"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {message}"), err
    assert no_prepare_step == {}


def test_keep_must_be_a_new_or_empty_folder(tmp_path, monkeypatch, capsys, no_prepare_step):
    # Files of an earlier run would join the corpus, or make the timed prepare a no-op.
    monkeypatch.setattr(data.bench, "documents", lambda *a: pytest.fail("read the corpus"))
    (tmp_path / "old.jsonl").write_text("{}\n")
    for keep in (tmp_path, tmp_path / "old.jsonl"):
        with pytest.raises(SystemExit):
            main([*TINY, "--keep", str(keep)])
        out, err = capsys.readouterr()
        assert out == "" and err == (f"error: --keep {keep} is not an empty folder: give a new "
                                     "or empty one, e.g. --keep /tmp/data-bench\n")


def test_the_prepare_step_runs_by_default_on_100_mb(capsys, no_prepare_step):
    main(TINY)
    assert no_prepare_step == {"corpus_mb": 100.0, "prepared": True}
    assert "prepare (data=local, 100 MB of .jsonl)" in capsys.readouterr().out
    assert "(default 100)" in data.bench._parser().format_help()


def test_corpus_mb_sizes_the_prepare_step(no_prepare_step):
    main([*TINY, "--corpus-mb", "2.5"])
    assert no_prepare_step == {"corpus_mb": 2.5, "prepared": True}


def test_no_prepare_times_the_tokenizer_only(capsys, no_prepare_step):
    main([*TINY, "--no-prepare"])
    assert no_prepare_step == {}
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["machine", "BPE training", "tokenize"]
    assert lines[2].startswith("tokenize: 50 documents of 1000 chars, ")


def test_end_to_end_prepare_in_a_child_process(tmp_path, capsys):
    keep = tmp_path / "kept"
    main([*TINY, "--corpus-mb", "1", "--keep", str(keep)])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("prepare (data=local, 1 MB of .jsonl): ")
    assert "tokens/s end to end, peak RSS" in out[-1]
    manifest = json.loads((keep / "data_cache" / "local" / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    assert out[-1].startswith(f"prepare (data=local, 1 MB of .jsonl): {tokens:,} tokens in ")
    assert manifest["tokenizer"]["vocab_size"] == 300  # the bench's own BPE, loaded by prepare


def test_a_failed_prepare_child_is_reported_as_its_last_line_and_the_rerun(tmp_path, monkeypatch):
    traceback = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                 "ValueError: shard 3 is damaged\n")

    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=traceback)

    monkeypatch.setattr(data.bench.subprocess, "run", fail)
    with pytest.raises(SystemExit) as exit_:
        data.bench.prepare_child(tmp_path / "corpus", tmp_path / "tok.json", tmp_path / "cache")
    message = str(exit_.value.code)
    assert "\n" not in message
    assert message.startswith("error: prepare failed (ValueError: shard 3 is damaged): rerun `cd ")
    corpus = tmp_path / "corpus"
    assert f"&& {sys.executable} -m data.prepare data=local data.path={corpus} " in message
    assert message.endswith(f"paths.data_dir={tmp_path / 'cache'}` to see all of its output")
