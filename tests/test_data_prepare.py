"""Tests for data.prepare: the prepare() function (build, no-op, refusal, force, interruption) and
the real `python -m data.prepare` command line, run in a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data import DataError, TokenDataset, prepare
from data.shards import MANIFEST, canonical_hash
from data.synthetic import SyntheticSource, ZipfFacts

REPO = Path(__file__).resolve().parent.parent
SMALL = {
    "name": "syn", "source": "synthetic", "vocab_size": 64, "n_facts": 100, "fact_len": 4,
    "facts_per_doc": 8, "zipf_exponent": 1.0, "train_tokens": 20_000, "val_tokens": 2_000,
    "shard_tokens": 8_000, "seed": 0,
}


def mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_prepare_writes_a_complete_manifest(tmp_path):
    messages: list[str] = []
    path = prepare(SMALL, tmp_path, report=messages.append)
    assert path == tmp_path / "syn" and messages == [f"wrote {path}"]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "scaling-sweep-shards" and manifest["version"] == 1
    assert (manifest["name"], manifest["vocab_size"], manifest["dtype"], manifest["eot_id"]) == (
        "syn", 64, "uint16", 0)
    assert manifest["tokenizer"]["kind"] == "synthetic" and len(manifest["tokenizer"]["hash"]) == 64
    assert manifest["token_bytes"] is None
    assert manifest["source"] == SMALL and manifest["config_hash"] == canonical_hash(SMALL)
    train = manifest["splits"]["train"]
    assert (train["tokens"], train["documents"], train["bytes"]) == (606 * 33, 606, None)
    assert [s["tokens"] for s in train["shards"]] == [8000, 8000, 3998]
    assert manifest["splits"]["val"]["tokens"] == 60 * 33
    truth = ZipfFacts(64, 100, 4, 8, 1.0, 0).entropies()
    syn = manifest["synthetic"]
    assert syn == pytest.approx(truth) and syn["entropy_rate_nats"] < syn["unigram_entropy_nats"]
    ds = TokenDataset.open(path)
    assert sum(len(s) for s in ds.tokens("train")) == 606 * 33
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temp dirs left


def test_rerun_is_a_noop_and_other_config_is_refused(tmp_path):
    path = prepare(SMALL, tmp_path)
    before = mtimes(path)
    messages: list[str] = []
    assert prepare(dict(SMALL, zipf_exponent=1), tmp_path, report=messages.append) == path
    assert "already prepared from this config" in messages[0] and mtimes(path) == before
    with pytest.raises(DataError, match=r"syn holds a dataset built from a different config "
                       r"\(data.seed=0 there, 1 here\); pass force=true to rebuild it or set "
                       r"data.name="):
        prepare(dict(SMALL, seed=1), tmp_path)
    assert mtimes(path) == before
    prepare(dict(SMALL, seed=1), tmp_path, force=True)
    assert TokenDataset.open(path).manifest["source"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_val_split_is_identical_whatever_the_train_size(tmp_path):
    a = TokenDataset.open(prepare(SMALL, tmp_path))
    b = TokenDataset.open(prepare(dict(SMALL, name="big", train_tokens=60_000), tmp_path))
    assert a.manifest["splits"]["val"]["shards"] == b.manifest["splits"]["val"]["shards"]
    assert a.num_tokens("train") != b.num_tokens("train")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 1}, "data.vocab_size=1 must be an integer"),
        ({"n_facts": 10**9}, "exceeds the 15752961 distinct facts"),
        ({"shard_tokens": 0}, "data.shard_tokens=0 must be an integer >= 1"),
        ({"val_tokens": -1}, "data.val_tokens=-1 must be"),
        ({"source": "web"}, "data.source='web' is not a known source (known: synthetic, hub,"),
        ({"name": "../x"}, "data.name='../x' is not a usable dataset name"),
        ({"n_fact": 3}, "data.n_fact is not an option of source 'synthetic'"),
    ],
)
def test_bad_config_raises_before_touching_disk(tmp_path, overrides, message):
    with pytest.raises(DataError) as err:
        prepare({**SMALL, **overrides}, tmp_path / "cache")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_interrupted_build_leaves_nothing_and_stale_builds_are_cleaned(tmp_path, monkeypatch):
    original = SyntheticSource.chunks

    def dies_midway(self):
        yield next(original(self))
        raise KeyboardInterrupt

    monkeypatch.setattr(SyntheticSource, "chunks", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare(SMALL, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # A build killed with SIGKILL leaves its temp dir; one whose process is gone gets removed,
    # one whose process is alive (a concurrent prepare) is left alone.
    dead, alive = tmp_path / "syn.tmp-999999999", tmp_path / f"syn.tmp-{os.getppid()}"
    for d in (dead, alive):
        d.mkdir()
        (d / "train_00000.bin.partial").write_bytes(b"\0" * 10)
    prepare(SMALL, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn", alive.name]


def test_concurrent_builder_keeps_the_first_identical_dataset(tmp_path, monkeypatch):
    path = prepare(SMALL, tmp_path)
    before = mtimes(path)
    # As if another process finished the same dataset while this one was still writing.
    # (sys.modules: `data.prepare` as an attribute is the re-exported function, not the package.)
    monkeypatch.setattr(sys.modules["data.prepare"], "_existing_is_current", lambda *a: False)
    assert prepare(SMALL, tmp_path) == path and mtimes(path) == before
    with pytest.raises(DataError, match="syn appeared while this prepare ran and holds something"):
        prepare(dict(SMALL, seed=3), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"] and mtimes(path) == before


def test_existing_non_dataset_dir_is_not_deleted(tmp_path):
    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists but holds no manifest.json"):
        prepare(SMALL, tmp_path)
    assert (tmp_path / "syn" / "notes.txt").read_text() == "mine"
    (tmp_path / "syn" / "notes.txt").unlink()  # an empty dir is simply reused
    assert (prepare(SMALL, tmp_path) / MANIFEST).is_file()


def test_force_replaces_only_a_dataset(tmp_path):
    # The error once said "pass force=true", and force=true then deleted the folder: here the
    # user's own corpus
    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "corpus.jsonl").write_text('{"text": "mine"}\n')
    with pytest.raises(DataError, match="not a dataset.: move it away or set data.name"):
        prepare(SMALL, tmp_path)
    with pytest.raises(DataError, match="force=true replaces only datasets"):
        prepare(SMALL, tmp_path, force=True)
    assert (tmp_path / "syn" / "corpus.jsonl").read_text() == '{"text": "mine"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_force_refuses_a_dataset_that_holds_the_corpus(tmp_path):
    from data.prepare import _check_replaceable

    path = prepare(SMALL, tmp_path)
    with pytest.raises(DataError, match=r"data.path='.*corpus' lies inside .*syn, which force"):
        _check_replaceable(path, {"path": str(path / "corpus")})
    _check_replaceable(path, {"path": str(tmp_path / "elsewhere")})
    _check_replaceable(path, {})  # the synthetic corpus has no path


def test_noop_refuses_a_truncated_dataset(tmp_path):
    path = prepare(SMALL, tmp_path)
    with open(path / "train_00001.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"train_00001.bin is truncated.*force=true"):
        prepare(SMALL, tmp_path)


def run_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCALING_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "data.prepare", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_end_to_end(tmp_path):
    small = ["data.train_tokens=200000", "data.val_tokens=20000", "data.shard_tokens=100000"]
    first = run_cli(tmp_path, *small)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "data_cache" / "synthetic"
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["splits"]["train"]["tokens"] == 1550 * 129
    assert [s["tokens"] for s in manifest["splits"]["train"]["shards"]] == [100000, 99950]
    assert manifest["source"]["n_facts"] == 512 and manifest["source"]["train_tokens"] == 200000
    rate = manifest["synthetic"]["entropy_rate_nats"]
    assert rate == pytest.approx(0.5909, abs=1e-4)  # the default 512-fact corpus
    assert "wrote data_cache/synthetic" in first.stdout and f"{rate:.4f}" in first.stdout
    assert "199,950 tokens" in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_cache"]  # no outputs/, .hydra, logs

    before = mtimes(path)
    again = run_cli(tmp_path, *small)
    assert again.returncode == 0 and "nothing to do" in again.stdout and mtimes(path) == before

    unwritable = run_cli(tmp_path, *small, f"paths.data_dir={path / MANIFEST}")  # a file
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.startswith(f"error: cannot write the dataset under {path / MANIFEST}")
    assert unwritable.stderr.count("\n") == 1

    other = run_cli(tmp_path, *small, "data.seed=1")
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.splitlines() == [
        "error: data_cache/synthetic holds a dataset built from a different config (data.seed=0 "
        "there, 1 here); pass force=true to rebuild it or set data.name=<another name>"
    ]
    bad = run_cli(tmp_path, "data.vocab_size=1", "data.name=bad")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "data.vocab_size=1" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in (tmp_path / "data_cache").iterdir()) == ["synthetic"]

    shard = path / "train_00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[1000] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard .*train_00001.bin is corrupted"):
        TokenDataset.open(path)
    shard.write_bytes(bytes(raw[:-2]))
    with pytest.raises(DataError, match=r"shard .*train_00001.bin is truncated"):
        TokenDataset.open(path)
