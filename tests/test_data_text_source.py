"""End-to-end tests of the text sources through prepare(): local files, a hub-style local repo and
the standard library, checked against the documents themselves; tokenizer checks; the CLIs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from data import DataError, TokenDataset, prepare
from data.prepare import check_tokenizer
from data.shards import MANIFEST
from data.text_source import is_val
from tests.conftest import CONFIGS, compose_train
from tests.test_data_text import isolate_hf

REPO = Path(__file__).resolve().parent.parent
EOT = "<|endoftext|>"
VAL_FRACTION = 0.2
_WORD_TEXT = (
    "the a of to and in is it that was for on are with as his they be at one have this from or "
    "had by word but what some we can out other were all there when up use your how said an each "
    "café naïve façade déjà über straße 中文 字符 北京 東京 😀 🚀 ñandú smörgåsbord"
)
WORDS = _WORD_TEXT.split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n distinct documents of English-ish words with some non-ASCII text and newlines."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
                 for _ in range(rng.randint(1, 4))]
        docs.append(f"Document {i}. " + "\n".join(lines))
    docs[7] += f" It quotes {EOT} in its text, which must not end it."
    return docs


DOCS = make_docs(200)


@pytest.fixture(autouse=True)
def hf_env(tmp_path_factory, monkeypatch):
    """Keep `datasets` off ~/.cache and off the network for every test here."""
    isolate_hf(monkeypatch, tmp_path_factory.getbasetemp() / "hf_home")


def data_config(preset: str, **overrides):
    """A data config as `python -m data.prepare data=<preset>` composes it, made small."""
    small = {"vocab_size": 300, "val_fraction": VAL_FRACTION, "batch_bytes": 2000,
             "shard_tokens": 5000}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"data={preset}"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {**data, **small, **overrides}


def write_txt(folder: Path, docs) -> Path:
    folder.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (folder / f"doc_{i:04d}.txt").write_text(doc, encoding="utf-8")
    return folder


def write_jsonl(folder: Path, docs, per_file: int = 120) -> Path:
    folder.mkdir(parents=True)
    for k in range(0, len(docs), per_file):
        with open(folder / f"part_{k // per_file}.jsonl", "w", encoding="utf-8") as f:
            for j, doc in enumerate(docs[k:k + per_file]):
                f.write(json.dumps({"id": k + j, "text": doc, "len": len(doc)}) + "\n")
    return folder


def write_parquet(path: Path, docs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), path,
                   row_group_size=50)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same 200 documents as a .txt folder, .jsonl files, .parquet files and a hub repo."""
    root = tmp_path_factory.mktemp("corpora")
    write_parquet(root / "pq" / "a.parquet", DOCS[:90])
    write_parquet(root / "pq" / "b.parquet", DOCS[90:])
    repo = root / "repo"
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", DOCS)
    write_parquet(repo / "data" / "validation-00000-of-00001.parquet",
                  ["held out by the hub, never read"] * 5)
    (repo / "README.md").write_text("# A dataset repo laid out like the hub's\n")
    return {
        "txt": write_txt(root / "txt", DOCS),
        "jsonl": write_jsonl(root / "jsonl", DOCS),
        "parquet": root / "pq",
        "repo": repo,
    }


def split_docs(tokens: np.ndarray, eot: int, tok: Tokenizer) -> list[str]:
    """Decode a split's tokens back into documents, one per EOT."""
    assert tokens.size and tokens[-1] == eot
    cuts = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(tokens[s:c].tolist()) for s, c in zip(starts, cuts, strict=True)]


def check_dataset(path: Path, docs: list[str]) -> dict[str, list[str]]:
    """Everything a prepared text dataset promises, against the documents it was built from."""
    ds = TokenDataset.open(path)  # checks every shard's and the tokenizer's sha256
    manifest = ds.manifest
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert ds.vocab_size == tok.get_vocab_size(with_added_tokens=True) == 300
    assert manifest["tokenizer"]["vocab_size"] == 300
    assert ds.eot_id == tok.token_to_id(EOT) == 0 and ds.dtype == np.uint16
    assert ds.token_bytes is not None and ds.token_bytes.shape == (300,)
    assert ds.token_bytes[ds.eot_id] == 0
    expected = {
        "train": [d for d in docs if not is_val(d.encode("utf-8"), VAL_FRACTION)],
        "val": [d for d in docs if is_val(d.encode("utf-8"), VAL_FRACTION)],
    }
    assert 20 <= len(expected["val"]) <= 60  # about a fifth of 200
    decoded = {}
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        shards = ds.tokens(split)
        assert entry["tokens"] == sum(s["tokens"] for s in entry["shards"])
        assert entry["tokens"] == sum(len(m) for m in shards) == ds.num_tokens(split)
        assert all(s["tokens"] <= 5000 for s in entry["shards"])
        tokens = np.concatenate(shards)
        decoded[split] = split_docs(tokens, ds.eot_id, tok)
        assert decoded[split] == expected[split]  # in source order, EOT after each
        n_bytes = sum(len(d.encode("utf-8")) for d in expected[split])
        assert entry["documents"] == len(expected[split])
        assert entry["bytes"] == n_bytes
        # Bits per byte are exact: the tokens' byte lengths add up to the text's bytes.
        assert int(ds.token_bytes[tokens].sum()) == n_bytes
    assert manifest["splits"]["train"]["tokens"] > 5000  # more than one shard
    assert len(manifest["splits"]["train"]["shards"]) >= 2
    assert manifest["corpus"]["documents_read"] == len(docs)
    assert manifest["tokenizer"]["kind"] in ("byte-level-bpe", "file")
    assert sorted(p.name for p in path.parent.iterdir() if ".tmp-" in p.name) == []
    return decoded


# --- each source, end to end -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_source_end_to_end(tmp_path, corpora, kind):
    messages = []
    cfg = data_config("local", path=str(corpora[kind]))
    path = prepare(cfg, tmp_path, report=messages.append)
    assert path == tmp_path / "local"
    check_dataset(path, DOCS)
    manifest = TokenDataset.open(path, verify=False).manifest
    assert manifest["corpus"]["files"] == {"txt": 200, "jsonl": 2, "parquet": 2}[kind]
    assert manifest["source"]["path"] == str(corpora[kind])
    assert manifest["tokenizer"]["trained_on_bytes"] == sum(
        len(d.encode()) for d in DOCS if not is_val(d.encode(), VAL_FRACTION))
    assert messages[0].startswith("training a byte-level BPE of 300 tokens")
    assert messages[-1] == f"wrote {path}"


def test_hub_source_reads_a_local_repo_like_the_hub(tmp_path, corpora):
    cfg = data_config("tinystories", dataset=str(corpora["repo"]), name="hubcopy")
    path = prepare(cfg, tmp_path)
    decoded = check_dataset(path, DOCS)  # the repo's validation file is never read
    assert "held out by the hub, never read" not in decoded["train"] + decoded["val"]
    manifest = TokenDataset.open(path, verify=False).manifest
    assert manifest["source"]["source"] == "hub" and manifest["source"]["split"] == "train"


def test_hub_source_data_files_pattern(tmp_path, corpora):
    cfg = data_config("tinystories", dataset=str(corpora["repo"]), name="hubfiles",
                      data_files="data/validation-*.parquet", val_fraction=0.5)
    # Only the validation file is read: five copies of one text, so all in one split.
    empty = "train" if is_val(b"held out by the hub, never read", 0.5) else "val"
    with pytest.raises(DataError, match=rf"^split '{empty}' got no documents out of 5: add "):
        prepare(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def stdlib_texts(files):
    # Universal newlines, as `datasets`' text builder reads them.
    texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]
    return [t for t in texts if t]


def test_stdlib_source_end_to_end(tmp_path):
    from data.text import stdlib_files

    cfg = data_config("stdlib", max_documents=30, suffixes=[".py"], include_tests=False,
                      val_fraction=0.1)
    path = prepare(cfg, tmp_path)
    ds = TokenDataset.open(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    files = stdlib_files([".py"], include_tests=False)
    docs = stdlib_texts(files[:40])[:30]  # the first 30 non-empty files, in sorted order
    assert len(docs) == 30
    for split in ("train", "val"):
        tokens = np.concatenate(ds.tokens(split))
        want = [d for d in docs if is_val(d.encode("utf-8"), 0.1) == (split == "val")]
        assert split_docs(tokens, ds.eot_id, tok) == want
        n_bytes = sum(len(d.encode("utf-8")) for d in want)
        assert ds.manifest["splits"][split]["bytes"] == n_bytes
        assert int(ds.token_bytes[tokens].sum()) == n_bytes
    assert ds.manifest["corpus"] == {"documents_read": 30, "files": len(files),
                                     "python": ds.manifest["source"]["python"]}


def test_a_small_sample_gives_a_smaller_vocabulary(tmp_path, corpora):
    messages = []
    cfg = data_config("local", path=str(corpora["parquet"]), vocab_size=4000)
    path = prepare(cfg, tmp_path, report=messages.append)
    ds = TokenDataset.open(path)
    size = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(True)
    assert 300 < size < 4000 and ds.vocab_size == size == ds.manifest["tokenizer"]["vocab_size"]
    assert ds.token_bytes.shape == (size,)
    assert f"the sample only supports {size} tokens, fewer than data.vocab_size=4000: the " \
           f"dataset uses {size}" in messages
    assert ds.manifest["tokenizer"]["spec"]["vocab_size"] == 4000  # the config, as asked
    check_tokenizer(ds, cfg)
    val = np.concatenate(ds.tokens("val"))
    assert int(ds.token_bytes[val].sum()) == ds.manifest["splits"]["val"]["bytes"]


# --- the split -------------------------------------------------------------------------------

def test_val_split_is_the_same_whatever_the_order_and_cap(tmp_path, corpora):
    full = check_dataset(prepare(data_config("local", path=str(corpora["jsonl"])), tmp_path / "a"),
                         DOCS)
    # Other files, other order, fewer documents: each document keeps its split.
    shuffled = DOCS[:]
    random.Random(1).shuffle(shuffled)
    folder = write_jsonl(tmp_path / "shuffled", shuffled, per_file=70)
    cfg = data_config("local", path=str(folder), max_documents=130, batch_bytes=10**6)
    path = prepare(cfg, tmp_path / "b")
    ds = TokenDataset.open(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    part = {s: split_docs(np.concatenate(ds.tokens(s)), ds.eot_id, tok) for s in ("train", "val")}
    kept = set(shuffled[:130])
    assert set(part["train"]) | set(part["val"]) == kept
    assert set(part["val"]) == set(full["val"]) & kept
    assert set(part["train"]) == set(full["train"]) & kept
    assert ds.manifest["corpus"]["documents_read"] == 130
    assert ds.manifest["splits"]["val"]["documents"] == len(set(full["val"]) & kept)


def test_same_config_gives_identical_shards_and_rerun_is_a_noop(tmp_path, corpora):
    cfg = data_config("local", path=str(corpora["txt"]))
    a, b = prepare(cfg, tmp_path / "a"), prepare(cfg, tmp_path / "b")
    ma, mb = (json.loads((p / MANIFEST).read_text()) for p in (a, b))
    assert ma == mb  # shards, tokenizer hash and counts: byte for byte the same
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    messages = []
    assert prepare(cfg, tmp_path / "a", report=messages.append) == a
    assert len(messages) == 1 and "is already prepared from this config" in messages[0]
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before
    with pytest.raises(DataError, match=r"holds a dataset built from a different config"):
        prepare({**cfg, "vocab_size": 320}, tmp_path / "a")
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before


def test_empty_val_split_is_refused_and_leaves_nothing(tmp_path, corpora):
    cfg = data_config("local", path=str(corpora["parquet"]), val_fraction=1e-9)
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "cache")
    assert str(err.value) == ("split 'val' got no documents out of 200: add documents or change "
                              "data.val_fraction")
    assert list((tmp_path / "cache").iterdir()) == []


# --- tokenizers: loading, checking -----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpora):
    """A dataset with a trained BPE, and one built with that tokenizer.json from another corpus."""
    root = tmp_path_factory.mktemp("trained")
    cfg = data_config("local", path=str(corpora["jsonl"]))
    first = prepare(cfg, root)
    other_docs = make_docs(120, seed=5)
    reuse = data_config("local", name="reused", path=str(write_txt(root / "other", other_docs)),
                        vocab_size=None, tokenizer_path=str(first / "tokenizer.json"))
    second = prepare(reuse, root)
    return {"cfg": cfg, "path": first, "reuse_cfg": reuse, "reuse_path": second,
            "other_docs": other_docs, "root": root}


def test_tokenizer_path_reuses_the_same_tokenizer(trained):
    a = TokenDataset.open(trained["path"])
    b = TokenDataset.open(trained["reuse_path"])
    assert (trained["reuse_path"] / "tokenizer.json").read_bytes() == (
        trained["path"] / "tokenizer.json").read_bytes()
    assert b.manifest["tokenizer"]["hash"] == a.manifest["tokenizer"]["hash"]
    assert b.manifest["tokenizer"]["kind"] == "file"
    assert b.manifest["tokenizer"]["trained_on_bytes"] is None
    assert b.manifest["tokenizer"]["spec"] == {
        "vocab_size": None, "eot_token": EOT,
        "tokenizer_sha256": a.manifest["tokenizer"]["hash"]}
    assert a.manifest["tokenizer"]["spec"] == {
        "vocab_size": 300, "eot_token": EOT, "tokenizer_train_bytes": 100_000_000}
    assert b.vocab_size == 300 and np.array_equal(a.token_bytes, b.token_bytes)
    tok = Tokenizer.from_file(str(trained["path"] / "tokenizer.json"))
    docs = trained["other_docs"]
    val = [d for d in docs if is_val(d.encode(), VAL_FRACTION)]
    assert split_docs(np.concatenate(b.tokens("val")), b.eot_id, tok) == val
    # The same tokenizer on the same corpus gives the same shards.
    same = prepare({**trained["cfg"], "name": "same", "vocab_size": None,
                    "tokenizer_path": str(trained["path"] / "tokenizer.json")},
                   trained["root"])
    c = TokenDataset.open(same)
    assert c.manifest["splits"] == a.manifest["splits"]


def test_tokenizer_path_with_another_vocab_size_is_refused(tmp_path, trained):
    cfg = {**trained["reuse_cfg"], "name": "wrongsize", "vocab_size": 512}
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path)
    assert str(err.value).startswith(
        f"data.vocab_size=512 but data.tokenizer_path='{trained['path'] / 'tokenizer.json'}' has "
        "token ids 0..299: set data.vocab_size=null (or to 300)")
    assert list(tmp_path.iterdir()) == []


def test_bad_tokenizer_path_is_one_line_naming_the_file(tmp_path, trained):
    bad = tmp_path / "bad_tokenizer.json"
    bad.write_text('{"model": "not a tokenizer"}')
    cfg = {**trained["reuse_cfg"], "name": "badtok", "tokenizer_path": str(bad)}
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and f"data.tokenizer_path='{bad}' is not a readable" in message
    assert not (tmp_path / "cache").exists()  # refused before data_dir is made
    cfg["tokenizer_path"] = str(tmp_path / "missing.json")
    with pytest.raises(DataError, match=r"^data.tokenizer_path='.*missing.json' cannot be read"):
        prepare(cfg, tmp_path / "cache")


def test_tokenizer_without_the_eot_token_is_refused(tmp_path, trained):
    cfg = {**trained["reuse_cfg"], "name": "noeot", "eot_token": "<|eos|>"}
    with pytest.raises(DataError, match=r"^data.tokenizer_path='.*tokenizer.json' has no token "
                                        r"'<\|eos\|>': set data.eot_token"):
        prepare(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_check_tokenizer_accepts_the_same_spec(trained):
    ds = TokenDataset.open(trained["path"], verify=False)
    check_tokenizer(ds, trained["cfg"])
    # Keys that do not decide the tokenizer may differ at train time.
    check_tokenizer(ds, {**trained["cfg"], "max_documents": 10, "batch_bytes": 7})
    reused = TokenDataset.open(trained["reuse_path"], verify=False)
    check_tokenizer(reused, trained["reuse_cfg"])
    # A tokenizer file is never assumed: without data.tokenizer_path the spec differs.
    with pytest.raises(DataError, match=r"was tokenized with data.vocab_size=None, but this "
                                        r"config has data.vocab_size=300"):
        check_tokenizer(reused, {**trained["reuse_cfg"], "tokenizer_path": None,
                                 "vocab_size": 300})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"vocab_size": 400}, "was tokenized with data.vocab_size=300, but this config has "
                              "data.vocab_size=400: drop the override"),
        ({"eot_token": "<eot>"}, "was tokenized with data.eot_token='<|endoftext|>', but this "
                                 "config has data.eot_token='<eot>'"),
        ({"tokenizer_train_bytes": 1000}, "was tokenized with data.tokenizer_train_bytes="
                                          "100000000, but this config has "
                                          "data.tokenizer_train_bytes=1000"),
    ],
)
def test_check_tokenizer_refuses_another_spec(trained, override, message):
    ds = TokenDataset.open(trained["path"], verify=False)
    with pytest.raises(DataError) as err:
        check_tokenizer(ds, {**trained["cfg"], **override})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"dataset 'local' at {trained['path']} was tokenized")


def test_check_tokenizer_refuses_another_tokenizer_file(tmp_path, trained):
    ds = TokenDataset.open(trained["reuse_path"], verify=False)
    other = tmp_path / "other.json"
    spec = json.loads((trained["path"] / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]  # one merge fewer: another tokenizer
    other.write_text(json.dumps(spec))
    with pytest.raises(DataError) as err:
        check_tokenizer(ds, {**trained["reuse_cfg"], "tokenizer_path": str(other)})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data.tokenizer_path='{other}' is not the tokenizer dataset "
                              f"'reused' at {trained['reuse_path']} was built with (sha256 ")
    assert message.endswith("rebuild it with python -m data.prepare data=<config> "
                            f"data.name=reused paths.data_dir={trained['reuse_path'].parent} "
                            "force=true")


@pytest.fixture
def plan_root(trained, tmp_path):
    """A paths.root_dir whose data_cache/local is the trained dataset (11,277 train tokens: the
    runs planned on it read 1e4, as budget.max_epochs=1 allows)."""
    (tmp_path / "data_cache").mkdir()
    (tmp_path / "data_cache" / "local").symlink_to(trained["path"], target_is_directory=True)
    return tmp_path


def test_plan_run_accepts_a_matching_text_dataset(trained, plan_root):
    from sweep.plan import plan_run

    cfg = compose_train(plan_root, "data=local", f"data.path={trained['cfg']['path']}",
                        "data.vocab_size=300", "data.val_fraction=0.2", "model=gpt_1m",
                        "budget.tokens=1e4")
    plan = plan_run(cfg)
    assert plan.model.vocab_size == 300 and plan.dataset.path == plan_root / "data_cache/local"


def test_plan_run_needs_no_corpus_path(plan_root):
    from sweep.plan import plan_run

    # Prepared elsewhere with data.path=...; training reads shards only.
    cfg = compose_train(plan_root, "data=local", "data.vocab_size=300", "model=gpt_1m",
                        "budget.tokens=1e4")
    assert cfg.data.path is None
    assert plan_run(cfg).model.vocab_size == 300
    # What decides the tokenizer is still checked.
    cfg = compose_train(plan_root, "data=local", "model=gpt_1m", "budget.tokens=1e4")  # 8192
    with pytest.raises(DataError, match=r"was tokenized with data.vocab_size=300, but this config "
                                        r"has data.vocab_size=8192"):
        plan_run(cfg)


# --- damaged and interrupted builds ----------------------------------------------------------

def test_truncated_or_corrupted_files_are_refused(tmp_path, corpora):
    cfg = data_config("local", path=str(corpora["txt"]))
    path = prepare(cfg, tmp_path)
    shard = path / "train_00000.bin"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-2])
    with pytest.raises(DataError) as err:
        TokenDataset.open(path)
    assert str(err.value).startswith(
        f"shard {shard} is truncated or overwritten: {len(raw) - 2} bytes on disk, the manifest "
        f"says {len(raw)}: rebuild it with")
    with pytest.raises(DataError, match=r"train_00000.bin is truncated"):
        prepare(cfg, tmp_path)  # not silently taken as already prepared
    shard.write_bytes(raw)
    TokenDataset.open(path)
    tokenizer_file = path / "tokenizer.json"
    tokenizer_file.write_text(tokenizer_file.read_text().replace('"Ġthe"', '"Ġthy"', 1))
    with pytest.raises(DataError, match=rf"^tokenizer {tokenizer_file} is corrupted \(sha256"):
        TokenDataset.open(path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_prepare_leaves_nothing(tmp_path, corpora, monkeypatch, error):
    import data.text

    real = data.text.stream_documents
    calls = []

    def dies_while_writing(*args, **kwargs):
        calls.append(1)
        docs = [d for batch in real(*args, **kwargs) for d in batch]
        for i in range(0, len(docs), 20):
            if len(calls) == 2 and i == 100:  # halfway through the pass that writes shards
                assert list((tmp_path / "cache").glob("local.tmp-*/train_00000.bin*"))
                raise error("killed")
            yield docs[i:i + 20]

    monkeypatch.setattr(data.text, "stream_documents", dies_while_writing)
    cfg = data_config("local", path=str(corpora["jsonl"]), batch_bytes=500)
    with pytest.raises(error, match="killed"):
        prepare(cfg, tmp_path / "cache")
    assert len(calls) == 2
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    check_dataset(prepare(cfg, tmp_path / "cache"), DOCS)


# --- command lines ---------------------------------------------------------------------------

def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SCALING_ROOT", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
               HF_ENDPOINT="http://127.0.0.1:9", WANDB_MODE="disabled")
    return env


def run(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)


def test_prepare_cli_local(tmp_path, corpora):
    result = run(tmp_path, "data.prepare", "data=local", f"data.path={corpora['txt']}",
                 "data.vocab_size=300", "data.val_fraction=0.2", "data.shard_tokens=5000",
                 "data.batch_bytes=2000", "paths.data_dir=dc")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "dc" / "local"
    decoded = check_dataset(path, DOCS)
    val = TokenDataset.open(path).manifest["splits"]["val"]
    assert len(decoded["val"]) == val["documents"]
    assert f"val: {val['tokens']:,} tokens, {val['documents']:,} documents" in result.stdout
    assert "training a byte-level BPE of 300 tokens" in result.stdout
    assert "wrote dc/local" in result.stdout and result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dc", "hf"]


def test_prepare_cli_hub_fails_fast_offline(tmp_path):
    start = time.monotonic()
    result = run(tmp_path, "data.prepare", "data=tinystories", "paths.data_dir=dc")
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and result.stdout == ""  # not even the BPE notice first
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach the Hugging Face hub at http://127.0.0.1:9 ")
    assert "data=local data.path=" in lines[0]
    assert elapsed < 5, elapsed
    assert not (tmp_path / "dc").exists()


@pytest.mark.parametrize(("args", "error"), [
    (["data=local", "data.path={tmp}/nonexistent/dir"],
     "error: data.path='{tmp}/nonexistent/dir' does not exist: point it at a folder, file or glob"),
    (["data=local", "data.path={tmp}/nothing*.jsonl"],
     "error: data.path='{tmp}/nothing*.jsonl' matches no .json, .jsonl, .parquet, .text, .txt "
     "files: fix data.path"),
    (["data=local", "data.path={jsonl}", "data.text_field=body"],
     "error: data.path='{jsonl}' has no field 'body' (fields: id, text, len): set "
     "data.text_field"),
    (["data=stdlib", "data.suffixes=[.zzz]"], "error: found no .zzz files under the standard "),
], ids=["missing-folder", "empty-glob", "wrong-text-field", "stdlib-suffixes"])
def test_prepare_cli_refuses_a_bad_corpus_before_any_output(tmp_path, corpora, args, error):
    where = {"tmp": tmp_path, "jsonl": corpora["jsonl"]}
    result = run(tmp_path, "data.prepare", *(a.format(**where) for a in args), "paths.data_dir=dc")
    assert result.returncode == 2
    assert result.stdout == ""  # no "training a byte-level BPE ..." before the error
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(error.format(**where)), result.stderr
    assert not (tmp_path / "dc").exists()


def test_a_prepared_dataset_needs_no_corpus_to_be_a_noop(tmp_path, corpora):
    corpus = write_txt(tmp_path / "corpus", DOCS[:60])
    cfg = data_config("local", path=str(corpus))
    path = prepare(cfg, tmp_path / "cache")
    for file in corpus.iterdir():
        file.unlink()
    corpus.rmdir()
    said: list[str] = []
    assert prepare(cfg, tmp_path / "cache", report=said.append) == path
    assert said == [f"{path} is already prepared from this config "
                    f"(hash {TokenDataset.open(path).manifest['config_hash'][:12]}): nothing to do"]


def test_train_cli_refuses_a_tokenizer_mismatch(tmp_path, corpora):
    prepare(data_config("local", path=str(corpora["txt"])), tmp_path / "data_cache")
    result = run(tmp_path, "sweep.train", f"paths.root_dir={tmp_path}", "data=local",
                 f"data.path={corpora['txt']}", "data.vocab_size=512", "data.val_fraction=0.2",
                 "model=gpt_1m", "budget.tokens=3e4", "logging.wandb.mode=disabled")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: dataset 'local' at {tmp_path / 'data_cache' / 'local'} "
                               "was tokenized with data.vocab_size=300, but this config has "
                               "data.vocab_size=512")
    assert not (tmp_path / "runs").exists()



def test_too_small_bpe_vocabulary_is_refused_before_reading_anything(tmp_path, corpora):
    cfg = data_config("local", path=str(corpora["txt"]), vocab_size=257)
    with pytest.raises(DataError, match=r"^data.vocab_size=257 is too small .* at least 258"):
        prepare(cfg, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_eot_counts_no_bytes_even_when_not_flagged_special(tmp_path, corpora):
    # A tokenizer.json whose end-of-text is a plain added token (not special).
    from tokenizers import AddedToken

    from data.tokenizer import train_bpe

    tok = train_bpe(iter(DOCS), 300, "<|endoftext|>")
    tok.add_tokens([AddedToken("<|end|>", special=False)])
    file = tmp_path / "plain_eot.json"
    file.write_text(tok.to_str())
    cfg = data_config("local", path=str(corpora["txt"]), tokenizer_path=str(file),
                      vocab_size=None, eot_token="<|end|>")
    ds = TokenDataset.open(prepare(cfg, tmp_path / "cache"))
    assert ds.token_bytes[ds.eot_id] == 0 and ds.eot_id == 300
    assert ds.token_bytes[tok.token_to_id("a")] == 1  # an ordinary byte token keeps its byte

    # Its string inside a document is text: not a false document end short of its bytes
    docs = [f"{doc} <|end|> and on" if i % 3 == 0 else doc for i, doc in enumerate(DOCS)]
    literal = write_txt(tmp_path / "literal", docs)
    ds = TokenDataset.open(prepare({**cfg, "path": str(literal)}, tmp_path / "cache2"))
    for split in ds.splits:
        entry = ds.manifest["splits"][split]
        tokens = np.concatenate(ds.tokens(split))
        assert (tokens == ds.eot_id).sum() == entry["documents"]
        assert ds.token_bytes[tokens].sum() == entry["bytes"]
