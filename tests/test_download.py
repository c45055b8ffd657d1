"""utils/download_data.py against a local HTTP server started here (no internet): resume with Range,
servers that ignore Range, truncated and corrupt downloads, gzip, DPR's names, paths and prefix matching."""

import gzip
import os
import random
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from utils import download_data as dd
from utils.download_data import DownloadError, download

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours `Range: bytes=N-` unless server.ignore_range; for a path in server.cuts
    sends only the next listed number of body bytes and drops the connection."""

    def do_GET(self):
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cuts = srv.cuts.get(self.path)
        if cuts:
            body = body[: cuts.pop(0)]
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.cuts, srv.seen, srv.ignore_range = {}, {}, [], False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(dd, "CHUNK", 4096)  # many reads per body, so a cut lands mid-stream
    monkeypatch.setattr(dd.time, "sleep", lambda s: None)  # no retry back-off in tests


def payload(n, seed=0):
    return random.Random(seed).randbytes(n)


def serve(server, path, data):
    server.files[path] = data
    return server.url + path


def leftovers(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_plain_download_is_byte_identical_and_then_skipped(server, tmp_path):
    data = payload(300_000)
    table = {"data.x.plain": {"url": serve(server, "/plain.bin", data), "ext": ".bin", "desc": "d"}}
    paths = download("data.x.plain", str(tmp_path), table)
    assert paths == [str(tmp_path / "data" / "x" / "plain.bin")]
    assert open(paths[0], "rb").read() == data
    assert leftovers(tmp_path) == ["data/x/plain.bin"]
    assert server.seen == [("/plain.bin", None)]
    download("data.x.plain", str(tmp_path), table)  # already complete: no request at all
    assert len(server.seen) == 1


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = payload(300_000)
    url = serve(server, "/big.bin", data)
    server.cuts["/big.bin"] = [100_000]
    table = {"data.big": {"url": url, "ext": ".bin", "desc": "d"}}
    final = tmp_path / "data" / "big.bin"
    with pytest.raises(DownloadError, match="truncated") as err:
        download("data.big", str(tmp_path), table, retries=0)
    assert url in str(err.value) and "rerun to resume" in str(err.value)
    assert not final.exists()
    part = tmp_path / "data" / "big.bin.part"
    have = part.stat().st_size
    assert 0 < have <= 100_000 and part.read_bytes() == data[:have]

    download("data.big", str(tmp_path), table, retries=0)
    assert final.read_bytes() == data
    assert server.seen == [("/big.bin", None), ("/big.bin", f"bytes={have}-")]
    assert leftovers(tmp_path) == ["data/big.bin"]


def test_retries_resume_within_one_call(server, tmp_path):
    data = payload(200_000, seed=1)
    url = serve(server, "/r.bin", data)
    server.cuts["/r.bin"] = [50_000, 60_000]  # two drops, then the rest
    download("data.r", str(tmp_path), {"data.r": {"url": url, "ext": ".bin", "desc": "d"}}, retries=2)
    assert (tmp_path / "data" / "r.bin").read_bytes() == data
    ranges = [r for _, r in server.seen]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:]) and len(ranges) == 3
    assert 0 < int(ranges[1][6:-1]) < int(ranges[2][6:-1]) < len(data)


def test_gz_resource_is_gunzipped_after_resumed_download(server, tmp_path):
    text = "".join(f"{i}\tpassage number {i} {random.Random(i).random()}\tTitle {i}\n" for i in range(5000))
    compressed = gzip.compress(text.encode())
    url = serve(server, "/psgs.tsv.gz", compressed)
    server.cuts["/psgs.tsv.gz"] = [len(compressed) // 2]
    table = {"data.wikipedia_split.psgs": {"url": url, "ext": ".tsv", "desc": "d"}}
    with pytest.raises(DownloadError):
        download("data.wikipedia_split.psgs", str(tmp_path), table, retries=0)
    assert leftovers(tmp_path) == ["data/wikipedia_split/psgs.tsv.gz.part"]
    download("data.wikipedia_split.psgs", str(tmp_path), table, retries=0)
    assert (tmp_path / "data" / "wikipedia_split" / "psgs.tsv").read_text() == text
    assert leftovers(tmp_path) == ["data/wikipedia_split/psgs.tsv"]  # no .gz, no .part
    assert server.seen[1][1] is not None


def test_truncated_download_is_an_error_and_never_at_the_final_name(server, tmp_path):
    data = payload(300_000)
    url = serve(server, "/t.bin", data)
    server.cuts["/t.bin"] = [30_000] * 10  # every response is cut short
    with pytest.raises(DownloadError, match="truncated") as err:
        download("data.t", str(tmp_path), {"data.t": {"url": url, "ext": ".bin", "desc": "d"}}, retries=2)
    assert url in str(err.value)
    assert len(server.seen) == 3
    assert leftovers(tmp_path) == ["data/t.bin.part"]  # kept for the next run's resume


def test_cli_exits_nonzero_on_truncated_download(server, tmp_path, monkeypatch, capsys):
    url = serve(server, "/c.bin", payload(50_000))
    server.cuts["/c.bin"] = [1000] * 10
    monkeypatch.setitem(dd.RESOURCES, "test.cut", {"url": url, "ext": ".bin", "desc": "d"})
    with pytest.raises(SystemExit) as err:
        dd.main(["--resource", "test.cut", "--output_dir", str(tmp_path)])
    assert str(err.value).startswith(f"error: {url}: truncated")
    assert not (tmp_path / "test" / "cut.bin").exists()


@pytest.mark.parametrize("bad", ["not gzip", "cut gzip", "flipped byte"])
def test_corrupt_gzip_is_detected_and_removed(server, tmp_path, bad):
    good = gzip.compress(payload(100_000, seed=2))
    data = {
        "not gzip": payload(5000),
        "cut gzip": good[: len(good) // 2],
        "flipped byte": good[:-6] + bytes([good[-6] ^ 0xFF]) + good[-5:],
    }[bad]  # corrupts the CRC
    url = serve(server, "/bad.bin.gz", data)  # served whole: only gzip itself can tell
    with pytest.raises(DownloadError, match="corrupt gzip") as err:
        download("data.bad", str(tmp_path), {"data.bad": {"url": url, "ext": ".bin", "desc": "d"}}, retries=0)
    assert url in str(err.value) and "bad.bin.gz" in str(err.value)
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload(200_000, seed=3)
    url = serve(server, "/i.bin", data)
    server.cuts["/i.bin"] = [70_000]
    server.ignore_range = True
    table = {"data.i": {"url": url, "ext": ".bin", "desc": "d"}}
    with pytest.raises(DownloadError):
        download("data.i", str(tmp_path), table, retries=0)
    download("data.i", str(tmp_path), table, retries=0)
    assert server.seen[1][1] is not None  # we asked for a range, got 200 with the whole file
    assert (tmp_path / "data" / "i.bin").read_bytes() == data


def test_stale_part_longer_than_remote_file_restarts(server, tmp_path):
    data = payload(10_000, seed=4)
    url = serve(server, "/s.bin", data)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.bin.part").write_bytes(payload(20_000, seed=5))
    download("data.s", str(tmp_path), {"data.s": {"url": url, "ext": ".bin", "desc": "d"}}, retries=0)
    assert (tmp_path / "data" / "s.bin").read_bytes() == data
    assert server.seen == [("/s.bin", "bytes=20000-"), ("/s.bin", None)]


def test_http_error_names_url_and_is_not_retried(server, tmp_path):
    url = server.url + "/missing.bin"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download("data.m", str(tmp_path), {"data.m": {"url": url, "ext": ".bin", "desc": "d"}}, retries=3)
    assert url in str(err.value) and len(server.seen) == 1


def test_prefix_download_fetches_selected_resources_and_license_files(server, tmp_path):
    lic = {"LICENSE": serve(server, "/LICENSE", b"license"), "README": serve(server, "/README", b"readme")}
    table = {
        "data.retriever.qas.nq-dev": {
            "url": serve(server, "/nq-dev.qa.csv", b"q1\t['a']\n"),
            "ext": ".csv",
            "desc": "d",
            "license_files": lic,
        },
        "data.retriever.qas.nq-test": {
            "url": serve(server, "/nq-test.qa.csv", b"q2\t['b']\n"),
            "ext": ".csv",
            "desc": "d",
            "license_files": lic,
        },
        "data.retriever.qas.trivia-test": {
            "url": serve(server, "/trivia.csv", b"q3\t['c']\n"),
            "ext": ".csv",
            "desc": "d",
        },
    }
    download("data.retriever.qas.nq", str(tmp_path), table)
    qas = tmp_path / "data" / "retriever" / "qas"
    assert sorted(os.listdir(qas)) == ["LICENSE", "README", "nq-dev.csv", "nq-test.csv"]
    assert (qas / "nq-test.csv").read_bytes() == b"q2\t['b']\n" and (
        qas / "LICENSE"
    ).read_bytes() == b"license"
    assert [p for p, _ in server.seen].count("/LICENSE") == 1  # fetched once, then found in place


def test_dpr_names_urls_paths_and_prefix_selection():
    r = dd.RESOURCES
    # URLs as published by DPR (from the issue), including the bucket's `retriver` typo
    assert (
        r["data.wikipedia_split.psgs_w100"]["url"]
        == "https://dl.fbaipublicfiles.com/dpr/wikipedia_split/psgs_w100.tsv.gz"
    )
    for split in ["train", "dev", "adv-hn-train"]:
        assert (
            r[f"data.retriever.nq-{split}"]["url"]
            == f"https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-{split}.json.gz"
        )
    for split in ["train", "dev", "test"]:
        assert (
            r[f"data.retriever.qas.nq-{split}"]["url"]
            == f"https://dl.fbaipublicfiles.com/dpr/data/retriever/nq-{split}.qa.csv"
        )
        assert r[f"data.retriever.qas.nq-{split}"]["license_files"] == {
            "LICENSE": "https://dl.fbaipublicfiles.com/dpr/nq_license/LICENSE",
            "README": "https://dl.fbaipublicfiles.com/dpr/nq_license/README",
        }
    assert (
        r["checkpoint.retriever.single.nq.bert-base-encoder"]["url"]
        == "https://dl.fbaipublicfiles.com/dpr/checkpoint/retriever/single/nq/hf_bert_base.cp"
    )
    assert (
        r["checkpoint.retriever.single-adv-hn.nq.bert-base-encoder"]["url"]
        == "https://dl.fbaipublicfiles.com/dpr/checkpoint/retriver/single-adv-hn/nq/hf_bert_base.cp"
    )

    def path(key):
        return dd.target_path(key, r[key], "downloads")

    assert path("data.wikipedia_split.psgs_w100") == "downloads/data/wikipedia_split/psgs_w100.tsv"
    assert path("data.retriever.nq-train") == "downloads/data/retriever/nq-train.json"
    assert path("data.retriever.qas.nq-test") == "downloads/data/retriever/qas/nq-test.csv"
    assert (
        path("checkpoint.retriever.single.nq.bert-base-encoder")
        == "downloads/checkpoint/retriever/single/nq/bert-base-encoder.cp"
    )

    assert sorted(dd.select("data.retriever.qas.nq")) == [
        "data.retriever.qas.nq-dev",
        "data.retriever.qas.nq-test",
        "data.retriever.qas.nq-train",
    ]
    assert sorted(dd.select("data.retriever.nq")) == [
        "data.retriever.nq-adv-hn-train",
        "data.retriever.nq-dev",
        "data.retriever.nq-train",
    ]
    assert dd.select("data.retriever.nq-train") == ["data.retriever.nq-train"]  # exact name: only itself
    retriever = dd.select("data.retriever")
    assert set(retriever) == {k for k in r if k.split(".")[:2] == ["data", "retriever"]}
    assert "data.retriever.qas.nq-test" in retriever and "data.wikipedia_split.psgs_w100" not in retriever
    assert sorted(dd.select("checkpoint.retriever.single")) == [
        "checkpoint.retriever.single-adv-hn.nq.bert-base-encoder",
        "checkpoint.retriever.single.nq.bert-base-encoder",
    ]


def test_list_prints_every_resource(capsys):
    dd.main(["--list"])
    out = capsys.readouterr().out
    for key, res in dd.RESOURCES.items():
        assert key in out and res["desc"] in out
    assert "downloads/data/retriever/qas/nq-test.csv" in out


def test_unknown_resource_is_a_clear_error(capsys):
    with pytest.raises(DownloadError, match="unknown resource 'data.nope'"):
        dd.select("data.nope")
    with pytest.raises(SystemExit) as err:
        dd.main(["--resource", "data.nope"])
    assert str(err.value).startswith("error: unknown resource 'data.nope'")


@pytest.mark.parametrize("cmd", [["utils/download_data.py"], ["-m", "utils.download_data"]])
def test_both_entry_points_run(cmd, tmp_path):
    ok = subprocess.run([sys.executable, *cmd, "--list"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "data.retriever.qas.nq-test" in ok.stdout
    bad = subprocess.run(
        [sys.executable, *cmd, "--resource", "nope", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "error: unknown resource 'nope'" in bad.stderr
    assert os.listdir(tmp_path) == []
