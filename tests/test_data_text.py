"""Tests for data.text: which files a data.path names, reading them through `datasets`, the fast
offline failure of the hub probe, and the standard library's file list.
"""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data.text
from data import DataError
from data.text import check_hub_reachable, local_files, stdlib_files, stream_documents


def isolate_hf(monkeypatch, home: Path) -> None:
    """Point `datasets`' caches at home and the hub at a closed port (no ~/.cache, no network)."""
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # datasets reads its cache paths once, at import: patch them if another test imported it.
    config = sys.modules.get("datasets.config")
    if config is not None:
        for name, path in (("HF_DATASETS_CACHE", home / "datasets"),
                           ("HF_MODULES_CACHE", home / "modules"),
                           ("DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads"),
                           ("EXTRACTED_DATASETS_PATH", home / "datasets" / "extracted")):
            monkeypatch.setattr(config, name, path)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch):
    isolate_hf(monkeypatch, tmp_path_factory.getbasetemp() / "hf_home")


def write_jsonl(path: Path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A folder with every kind of file, each kind in its own subfolder."""
    root = tmp_path / "corpus"
    (root / "txt" / "sub").mkdir(parents=True)
    (root / "txt" / "b.txt").write_text("second file\nstill the second\n\nits second paragraph")
    (root / "txt" / "a.txt").write_text("first file: café 中文 😀\n")
    (root / "txt" / "sub" / "c.text").write_text("third file, in a subfolder")
    (root / "txt" / ".hidden.txt").write_text("hidden files are skipped")
    (root / "txt" / "notes.md").write_text("unknown suffixes are skipped in auto mode")
    (root / "js").mkdir()
    write_jsonl(root / "js" / "a.jsonl",
                [{"text": f"json {i} é", "id": i, "meta": {"k": i}} for i in range(5)])
    write_jsonl(root / "js" / "b.jsonl.gz", [{"text": f"gz {i}", "id": i} for i in range(3)],
                opener=gzip.open)
    (root / "pq").mkdir()
    table = pa.table({"id": [0, 1, 2, 3], "text": ["pq zero", "pq one 中", None, ""],
                      "score": [0.5, 0.1, 0.2, 0.3]})
    pq.write_table(table, root / "pq" / "part-0.parquet")
    pq.write_table(pa.table({"id": [4], "text": ["pq four"], "score": [0.9]}),
                   root / "pq" / "part-1.parquet")
    return root


def read_all(path: str, fmt: str = "auto", text_field: str = "text", batch_docs: int = 2):
    builder, files = local_files(path, fmt)
    extra = {"sample_by": "document"} if builder == "text" else {}
    batches = list(stream_documents(builder, data_files=files, split="train",
                                    text_field=text_field, batch_docs=batch_docs,
                                    origin=f"data.path={path!r}", **extra))
    return batches, [d for b in batches for d in b]


# --- local_files -----------------------------------------------------------------------------

def test_folder_of_text_files_is_sorted_recursive_and_skips_hidden_and_unknown(corpus):
    builder, files = local_files(str(corpus / "txt"), "auto")
    assert builder == "text"
    assert [Path(f).relative_to(corpus / "txt").as_posix() for f in files] == [
        "a.txt", "b.txt", "sub/c.text"]


def test_folder_of_jsonl_with_compressed_file(corpus):
    builder, files = local_files(str(corpus / "js"), "auto")
    assert builder == "json" and [Path(f).name for f in files] == ["a.jsonl", "b.jsonl.gz"]


def test_folder_of_parquet(corpus):
    builder, files = local_files(str(corpus / "pq"), "auto")
    assert builder == "parquet" and [Path(f).name for f in files] == [
        "part-0.parquet", "part-1.parquet"]


def test_glob_and_single_file(corpus):
    builder, files = local_files(str(corpus / "**" / "*.jsonl*"), "auto")
    assert builder == "json" and [Path(f).name for f in files] == ["a.jsonl", "b.jsonl.gz"]
    builder, files = local_files(str(corpus / "js" / "*.jsonl"), "auto")
    assert builder == "json" and [Path(f).name for f in files] == ["a.jsonl"]
    builder, files = local_files(str(corpus / "pq" / "part-1.parquet"), "auto")
    assert builder == "parquet" and files == [str(corpus / "pq" / "part-1.parquet")]


def test_an_existing_path_with_glob_characters_is_literal(tmp_path):
    folder = tmp_path / "corpus [v2]"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    (tmp_path / "corpus v").mkdir()  # what '[v2]' would match as a glob: 'corpus v'
    (tmp_path / "corpus v" / "b.txt").write_text("other")
    assert local_files(str(folder), "auto") == ("text", [str(folder / "a.txt")])
    assert local_files(str(folder / "a.txt"), "auto") == ("text", [str(folder / "a.txt")])


def test_mixed_suffixes_are_refused(corpus):
    with pytest.raises(DataError, match=r"mixes json and parquet and text files: point it at one "
                                        r"kind .* or set data.format"):
        local_files(str(corpus), "auto")
    with pytest.raises(DataError, match=r"mixes json and text files"):
        local_files(str(corpus / "*" / "a.*"), "auto")


def test_unknown_suffix_needs_an_explicit_format(tmp_path):
    (tmp_path / "data.dump").write_text('{"text": "a record"}\n{"text": "another"}\n')
    with pytest.raises(DataError, match=r"cannot tell the format of .*data.dump from its suffix: "
                                        r"set data.format=text\|json\|parquet"):
        local_files(str(tmp_path / "data.dump"), "auto")
    # A folder in auto mode skips it, so nothing is left.
    with pytest.raises(DataError, match=r"matches no \.json, \.jsonl, \.parquet, \.text, \.txt"):
        local_files(str(tmp_path), "auto")
    builder, files = local_files(str(tmp_path / "data.dump"), "json")
    assert builder == "json" and files == [str(tmp_path / "data.dump")]
    _, docs = read_all(str(tmp_path / "data.dump"), fmt="json")
    assert docs == ["a record", "another"]


def test_nonexistent_path_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match=r"^data.path='.*missing' does not exist: point it at a "
                                        r"folder, file or glob$"):
        local_files(str(tmp_path / "missing"), "auto")
    with pytest.raises(DataError, match=r"matches no .* files: fix data.path"):
        local_files(str(tmp_path / "*.jsonl"), "auto")


# --- stream_documents ------------------------------------------------------------------------

def test_text_files_are_one_document_each(corpus):
    batches, docs = read_all(str(corpus / "txt"))
    assert docs == [
        "first file: café 中文 😀\n",
        "second file\nstill the second\n\nits second paragraph",
        "third file, in a subfolder",
    ]
    assert [len(b) for b in batches] == [2, 1]


def test_text_sample_by_line_and_paragraph(corpus):
    _, files = local_files(str(corpus / "txt" / "b.txt"), "auto")
    common = dict(data_files=files, split="train", text_field="text", batch_docs=8, origin="t")
    lines = [d for b in stream_documents("text", sample_by="line", **common) for d in b]
    assert lines == ["second file", "still the second", "its second paragraph"]  # blank dropped
    paragraphs = [d for b in stream_documents("text", sample_by="paragraph", **common) for d in b]
    assert [p.strip() for p in paragraphs] == ["second file\nstill the second",
                                                "its second paragraph"]


def test_jsonl_reads_the_text_field_in_file_order(corpus):
    _, docs = read_all(str(corpus / "js"), batch_docs=3)
    assert docs == [f"json {i} é" for i in range(5)] + [f"gz {i}" for i in range(3)]


def test_parquet_skips_null_and_empty_texts(corpus):
    batches, docs = read_all(str(corpus / "pq"), batch_docs=10)
    assert docs == ["pq zero", "pq one 中", "pq four"]


def test_other_text_field(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": "b0", "text": "t0"}, {"body": "b1", "text": "t1"}])
    assert read_all(str(tmp_path), text_field="body")[1] == ["b0", "b1"]


@pytest.mark.parametrize("kind", ["js", "pq", "txt"])
def test_wrong_text_field_is_one_line_naming_the_field(corpus, kind):
    with pytest.raises(DataError) as err:
        read_all(str(corpus / kind), text_field="body")
    message = str(err.value)
    assert "\n" not in message
    assert "has no field 'body'" in message and "set data.text_field" in message
    assert f"data.path='{corpus / kind}'" in message


def test_non_text_field_is_refused(corpus):
    with pytest.raises(DataError, match=r"field 'score' holds float, not text: set "
                                        r"data.text_field to a text column"):
        read_all(str(corpus / "pq"), text_field="score")


def test_unreadable_file_is_one_data_error(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"^data.path='.*' could not be read \(\w+: .*\): fix the "
                                        r"source$") as err:
        read_all(str(tmp_path))
    assert "\n" not in str(err.value)


# --- check_hub_reachable ---------------------------------------------------------------------

@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_variable_fails_at_once(monkeypatch, var):
    monkeypatch.setenv(var, "1")
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"^{var} is set, so the Hugging Face hub is off limits") \
            as err:
        check_hub_reachable("roneneldan/TinyStories")
    assert time.monotonic() - start < 0.1
    assert "data=local data.path=" in str(err.value) and "\n" not in str(err.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "closed"])
def test_unreachable_endpoint_fails_fast_naming_the_fix(monkeypatch, endpoint):
    if endpoint == "closed":
        endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        check_hub_reachable("roneneldan/TinyStories")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert message.startswith(f"cannot reach the Hugging Face hub at {endpoint} (")
    assert "data.dataset='roneneldan/TinyStories'" in message
    assert "data=local data.path=" in message and "\n" not in message


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers HEAD /api/datasets/<name>: 200 for known/name, 404 for anything else."""

    def do_HEAD(self):  # noqa: N802 (the http.server API)
        self.send_response(200 if self.path == "/api/datasets/known/name" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}/")
    yield
    server.shutdown()
    server.server_close()


def test_an_answering_hub_passes_and_a_missing_dataset_is_named(fake_hub):
    check_hub_reachable("known/name", timeout_s=2.0)  # answered 200: no error
    with pytest.raises(DataError, match=r"^the hub at http://127.0.0.1:\d+ has no dataset "
                       r"'nope/x': fix data.dataset"):
        check_hub_reachable("nope/x", timeout_s=2.0)


def test_a_silent_listener_is_not_a_hub(monkeypatch):
    # TCP accepts but no HTTP answer comes (a captive firewall): offline, not reachable.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub"):
            check_hub_reachable("x", timeout_s=0.5)
        assert time.monotonic() - start < 2


def test_probe_asks_the_endpoints_dataset_api(monkeypatch):
    seen = []

    def fake_urlopen(request, timeout):
        seen.append((request.full_url, request.get_method(), timeout))
        raise OSError("nope")

    monkeypatch.setattr(data.text, "urlopen", fake_urlopen)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example:8080/prefix/")
    with pytest.raises(DataError, match=r"at http://hub.example:8080/prefix \(OSError: nope\)"):
        check_hub_reachable("a b/c", timeout_s=1.5)
    assert seen[-1] == ("http://hub.example:8080/prefix/api/datasets/a%20b/c", "HEAD", 1.5)
    monkeypatch.delenv("HF_ENDPOINT")
    with pytest.raises(DataError, match=r"at https://huggingface.co \(OSError: nope\)"):
        check_hub_reachable("x")
    assert seen[-1][0] == "https://huggingface.co/api/datasets/x"


def test_a_malformed_endpoint_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example:port")
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub at http://hub.example"
                       r":port \(InvalidURL: nonnumeric port") as err:
        check_hub_reachable("x", timeout_s=1.0)
    assert "\n" not in str(err.value)


def test_a_hanging_probe_gives_up_after_the_timeout(monkeypatch):
    # As if name resolution hung (getaddrinfo has no timeout of its own).
    release = threading.Event()

    def hangs(*args, **kwargs):
        release.wait(10)
        raise OSError("released")

    monkeypatch.setattr(data.text, "urlopen", hangs)
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match=r"\(no answer in 0.3 s\)"):
            check_hub_reachable("x", timeout_s=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        release.set()


# --- stdlib_files ----------------------------------------------------------------------------

def test_stdlib_files_finds_the_standard_library():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files([".py"], include_tests=True)
    assert files == sorted(files) and len(files) > 500
    assert str(root / "json" / "__init__.py") in files and str(root / "os.py") in files
    assert all(f.endswith(".py") and Path(f).is_file() for f in files)
    rel = [Path(f).relative_to(root).parts for f in files]
    assert not any({"site-packages", "dist-packages", "__pycache__"} & set(p) for p in rel)


def test_stdlib_files_without_tests():
    root = Path(sysconfig.get_paths()["stdlib"])
    with_tests = stdlib_files([".py", ".txt"], include_tests=True)
    without = stdlib_files([".py", ".txt"], include_tests=False)
    assert set(without) < set(with_tests)
    test_dirs = {"test", "tests", "idle_test"}
    assert not any(test_dirs & set(Path(f).relative_to(root).parts) for f in without)
    dropped = set(with_tests) - set(without)
    assert all(test_dirs & set(Path(f).relative_to(root).parts) for f in dropped)
    if (root / "test").is_dir():  # some distributions ship the stdlib without its tests
        assert any(Path(f).relative_to(root).parts[0] == "test" for f in dropped)
    assert {Path(f).suffix for f in without} == {".py", ".txt"}


def test_stdlib_files_unknown_suffix_is_a_data_error():
    with pytest.raises(DataError, match=r"found no \.nothing files under the standard library at "
                                        r".*: fix data.suffixes"):
        stdlib_files([".nothing"], include_tests=True)
