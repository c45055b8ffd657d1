"""utils/retriever.py and search_dpr.py: the API answers what test_dpr.py measured (same ids, same scores),
the server answers every bad request with a 4xx and keeps answering, concurrent clients get the brute-force
top-k, and the page shows the top passage in a real browser (headless Chromium). Loopback only; every wait
is bounded."""

import html
import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse

import numpy as np
import pytest
import torch
from transformers import BertModel, BertTokenizerFast

import search_dpr
import test_dpr
from conftest import ROOT, make_tiny_bert, write_embedding_dir, write_passages_tsv
from utils.formats import read_results
from utils.models import encoder_identity, load_encoder
from utils.retriever import Batcher, Retriever

WORDS = ["river", "city", "king", "the", "of", "and", "stone", "bridge", "tower", "field", "road", "hill"]
QUESTIONS = [
    f"what {a} of the {b} is the {c}" for a, b, c in zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7])
]
K = 10


def recorded_encoder(model):
    """meta.json's record naming `model` as the encoder of the (random) vectors: it serves as the question
    encoder, as one model serving both towers."""
    return encoder_identity(load_encoder(model, "question")[0], model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    rows = [(pid, " ".join(rng.choice(WORDS, 12)), f"title {pid}") for pid in range(201, 261)]
    tsv = write_passages_tsv(str(tmp / "psgs.tsv"), rows)
    qa_file = tmp / "qa.csv"
    qa_file.write_text("".join(f"{q}\t['paris']\n" for q in QUESTIONS))
    emb = rng.standard_normal((len(rows), 32)).astype(np.float16)
    model = make_tiny_bert(str(tmp / "question_encoder"), role="question")
    ids = [r[0] for r in rows]
    emb_dir = write_embedding_dir(str(tmp / "emb"), ids, emb, tsv, 1, recorded_encoder(model))
    return dict(tmp=tmp, rows=rows, tsv=tsv, qa_file=str(qa_file), emb=emb, emb_dir=emb_dir, model=model)


@pytest.fixture(scope="module")
def retriever(corpus):
    return Retriever(corpus["model"], corpus["emb_dir"], corpus["tsv"], index_device="cpu")


def reference(corpus, questions, k):
    """Independent expectation: a BertModel forward per question ([CLS], zero token types), numpy search."""
    tokenizer = BertTokenizerFast.from_pretrained(corpus["model"])
    model = BertModel.from_pretrained(corpus["model"], add_pooling_layer=False).eval()
    with torch.no_grad():
        enc = [tokenizer(q, return_tensors="pt") for q in questions]
        q = np.stack(
            [
                model(
                    input_ids=e["input_ids"],
                    attention_mask=e["attention_mask"],
                    token_type_ids=torch.zeros_like(e["input_ids"]),
                )
                .last_hidden_state[0, 0]
                .numpy()
                for e in enc
            ]
        )
    scores = q.astype(np.float64) @ corpus["emb"].astype(np.float64).T
    return scores, np.argsort(-scores, axis=1)[:, :k]


def assert_top_k(results, corpus, scores, order, k):
    """results ([{id, title, text, score}] per question) are the reference top-k: the same scores (1e-4),
    the same ids where the reference order is clear (neighbours more than 1e-3 apart), the right passages."""
    passages = {pid: (text, title) for pid, text, title in corpus["rows"]}
    ids = np.array([pid for pid, _, _ in corpus["rows"]])
    for got, row_scores, row in zip(results, scores, order):
        assert len(got) == k
        top = row_scores[row]
        np.testing.assert_allclose([p["score"] for p in got], top, atol=1e-4)
        gaps = -np.diff(row_scores[np.argsort(-row_scores)[: k + 1]])
        clear = np.r_[True, gaps[: k - 1] > 1e-3] & (gaps[:k] > 1e-3)
        assert ([p["id"] for p in got] == ids[row])[clear].all()
        assert all((p["text"], p["title"]) == passages[p["id"]] for p in got)


# ---------------------------------------------------------------------------------------------
# The API answers what test_dpr.py measured


@pytest.mark.parametrize("index", ["flat", "HNSW8"])
def test_api_returns_test_dpr_ids_and_scores(corpus, index):
    out, index_path = str(corpus["tmp"] / f"results_{index}.json"), str(corpus["tmp"] / f"{index}.faiss")
    argv = [
        "--embedding_dir",
        corpus["emb_dir"],
        "--pretrained_model_path",
        corpus["model"],
        "--wikipedia_path",
        corpus["tsv"],
        "--qa_file",
        corpus["qa_file"],
        "--top_k",
        str(K),
        "--output_file",
        out,
        "--index",
        index,
        "--index_device",
        "cpu",
        "--num_workers",
        "1",
    ] + (["--index_path", index_path] if index != "flat" else [])
    test_dpr.main(argv)
    records = read_results(out)
    api = Retriever(
        corpus["model"],
        corpus["emb_dir"],
        corpus["tsv"],
        index,
        index_path if index != "flat" else None,
        "cpu",
    )
    if index != "flat":
        assert f"loaded from {index_path}" in api.index_name  # the index test_dpr.py saved
    results = api.search(QUESTIONS, K)
    for rec, got in zip(records, results):  # the very same numbers: same encoder batches, same index
        assert [p["id"] for p in got] == [int(c["id"]) for c in rec["ctxs"]]
        assert [np.float32(p["score"]) for p in got] == [np.float32(c["score"]) for c in rec["ctxs"]]
        assert [(p["title"], p["text"]) for p in got] == [(c["title"], c["text"]) for c in rec["ctxs"]]
    # 60 passages, efSearch 256: HNSW is exact here
    assert_top_k(results, corpus, *reference(corpus, QUESTIONS, K), K)


def test_command_line_prints_top_k(corpus, retriever, capsys):
    search_dpr.main(
        [
            "--embedding_dir",
            corpus["emb_dir"],
            "--pretrained_model_path",
            corpus["model"],
            "--wikipedia_path",
            corpus["tsv"],
            "--index_device",
            "cpu",
            "--top_k",
            "3",
            QUESTIONS[0],
            QUESTIONS[1],
        ]
    )
    out = capsys.readouterr().out
    for question, passages in zip(QUESTIONS[:2], retriever.search(QUESTIONS[:2], 3)):
        block = out.split(question + "\n", 1)[1]
        lines = [line for line in block.splitlines() if re.match(r" +\d+\. ", line)][:3]
        assert lines == [
            f"{r:3d}. {p['title']}  (score {p['score']:.2f}, id {p['id']})" for r, p in enumerate(passages, 1)
        ]
    assert out.count("4. ") == 0


def test_command_line_error_is_one_line(corpus, tmp_path):
    with pytest.raises(SystemExit) as exc:
        search_dpr.main(
            [
                "--embedding_dir",
                str(tmp_path),
                "--pretrained_model_path",
                corpus["model"],
                "--wikipedia_path",
                corpus["tsv"],
                "what",
            ]
        )
    assert str(exc.value.code).startswith("error: ") and "meta.json" in str(exc.value.code)


# ---------------------------------------------------------------------------------------------
# Micro-batching: the questions waiting together go through one search


class BlockingRetriever:
    """Records each batch; the first search blocks until released. A question "fail" raises."""

    dim = 8

    def __init__(self):
        self.batches, self.release = [], threading.Event()

    def search(self, questions, k):
        self.batches.append(list(questions))
        if len(self.batches) == 1:
            assert self.release.wait(30)
        if "fail" in questions:
            raise RuntimeError("broken index")
        return [[{"id": i, "q": q} for i in range(k)] for q in questions]


def test_batcher_answers_waiting_questions_as_one_batch():
    fake = BlockingRetriever()
    batcher, answers = Batcher(fake, max_batch=32, max_wait=0), {}

    def ask(name, questions, k):
        answers[name] = batcher.search(questions, k)

    first = threading.Thread(target=ask, args=("first", ["q0"], 2))
    first.start()
    deadline = time.monotonic() + 30
    while not fake.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    threads = [threading.Thread(target=ask, args=(f"t{i}", [f"a{i}", f"b{i}"], i + 1)) for i in range(5)]
    for t in threads:
        t.start()
    # all five wait behind the blocked first batch
    while batcher.jobs.qsize() < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.release.set()
    for t in [first] + threads:
        t.join(30)
    assert fake.batches[0] == ["q0"] and len(fake.batches) == 2
    assert sorted(fake.batches[1]) == sorted(q for i in range(5) for q in (f"a{i}", f"b{i}"))
    assert answers["first"] == [[{"id": 0, "q": "q0"}, {"id": 1, "q": "q0"}]]
    for i in range(5):  # each caller gets its own questions, cut to its own k
        assert answers[f"t{i}"] == [[{"id": j, "q": q} for j in range(i + 1)] for q in (f"a{i}", f"b{i}")]
    assert (batcher.batches, batcher.questions) == (2, 11)
    with pytest.raises(RuntimeError, match="broken index"):
        batcher.search(["fail"], 1)
    assert batcher.search(["ok"], 1) == [[{"id": 0, "q": "ok"}]]  # the worker survived the error


# ---------------------------------------------------------------------------------------------
# HTTP: bad requests get a 4xx and change nothing; concurrent clients get correct answers


@pytest.fixture(scope="module")
def server(retriever):
    srv = search_dpr.make_server(retriever, "127.0.0.1", 0, max_wait_ms=5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    thread.join(30)


def request(port, method, path, body=None, headers=None):
    """(status, parsed JSON or text, headers) of one request; body: bytes, or an object sent as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        kind = resp.getheader("Content-Type", "")
        return resp.status, json.loads(data) if "json" in kind and data else data.decode(), resp
    finally:
        conn.close()


def search_url(q, k=None):
    return "/search?" + urllib.parse.urlencode({"q": q} if k is None else {"q": q, "k": k})


BAD_REQUESTS = [  # (method, path, body, status, words in the error)
    ("GET", "/search", None, 400, "q="),
    ("GET", search_url(""), None, 400, "empty"),
    ("GET", search_url("   "), None, 400, "empty"),
    ("GET", search_url("x" * 1001), None, 400, "1001 characters"),
    ("GET", search_url("what", 0), None, 400, "from 1 to 60"),  # 60 passages: k at most 60
    ("GET", search_url("what", 61), None, 400, "61"),
    ("GET", search_url("what", -1), None, 400, "k must"),
    ("GET", search_url("what", "abc"), None, 400, "'abc'"),
    ("GET", search_url("what", "1.5"), None, 400, "k must"),
    ("GET", search_url("what", "\u00b2"), None, 400, "k must"),
    ("GET", "/search?q=a&q=b", None, 400, "one q"),
    ("GET", "/search?q=a&top=3", None, 400, "one q"),
    ("POST", "/search", b"{not json", 400, "not valid JSON"),
    ("POST", "/search", b"\xff\xfe\xfa", 400, "not valid JSON"),
    ("POST", "/search", ["what"], 400, "JSON object"),
    ("POST", "/search", {"question": ["what"]}, 400, "JSON object"),
    ("POST", "/search", {"questions": ["what"], "k": 3, "extra": 1}, 400, "JSON object"),
    ("POST", "/search", {"questions": "what"}, 400, "non-empty list"),
    ("POST", "/search", {"questions": []}, 400, "non-empty list"),
    ("POST", "/search", {"questions": ["what", 7]}, 400, "question 1 is a int"),
    ("POST", "/search", {"questions": ["what", None]}, 400, "question 1 is a NoneType"),
    ("POST", "/search", {"questions": ["what", ""]}, 400, "question 1 is empty"),
    ("POST", "/search", {"questions": ["what"] * 65}, 400, "at most 64"),
    ("POST", "/search", {"questions": ["what"], "k": "5"}, 400, "k must"),
    ("POST", "/search", {"questions": ["what"], "k": True}, 400, "k must"),
    ("POST", "/search", {"questions": ["what"], "k": 2.0}, 400, "k must"),
    ("POST", "/search", b"x" * (search_dpr.MAX_BODY + 1), 413, "at most"),
    ("GET", "/nowhere", None, 404, "no such path"),
    ("POST", "/nowhere", {"questions": ["what"]}, 404, "no such path"),
    ("POST", "/health", b"{}", 405, "use GET"),
    ("DELETE", "/search", None, 405, "use GET, POST"),
    ("PUT", "/", b"x", 405, "use GET"),
    ("PATCH", "/search", b"{}", 405, "use GET, POST"),
]


def test_every_bad_request_gets_its_4xx_and_changes_nothing(server, retriever):
    good = search_url(QUESTIONS[0], 5)
    status, expected, _ = request(server, "GET", good)
    assert status == 200
    for method, path, body, want, words in BAD_REQUESTS:
        status, data, resp = request(server, method, path, body)
        assert (status, type(data)) == (want, dict), (method, path, data)
        assert words in data["error"], (method, path, data)
        if status == 405:
            assert resp.getheader("Allow") in ("GET", "GET, POST")
        status, again, _ = request(server, "GET", good)
        assert status == 200 and again["results"] == expected["results"], (method, path)
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)  # a POST without Content-Length
    conn.putrequest("POST", "/search")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()
    status, data, resp = request(server, "HEAD", "/")
    assert status == 405 and data == ""


def test_search_health_and_page(server, retriever, corpus):
    status, data, _ = request(server, "POST", "/search", {"questions": QUESTIONS[:3], "k": 4})
    assert status == 200 and data["questions"] == QUESTIONS[:3] and data["k"] == 4 and data["took_ms"] >= 0
    assert_top_k(data["results"], corpus, *reference(corpus, QUESTIONS[:3], 4), 4)
    status, data, _ = request(server, "GET", "/search?" + urllib.parse.urlencode({"q": QUESTIONS[3]}))
    assert status == 200 and data["k"] == 10  # the default k
    assert_top_k(data["results"], corpus, *reference(corpus, QUESTIONS[3:4], 10), 10)
    status, data, _ = request(server, "GET", "/health")
    assert status == 200 and data["status"] == "ok" and data["passages"] == 60 and data["max_k"] == 60
    status, page, resp = request(server, "GET", "/")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/html") and "fetch(" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no external assets
    assert retriever.search([], 3) == []


def test_eight_clients_at_once_get_correct_answers(server, retriever, corpus):
    rng = np.random.default_rng(1)
    questions = [" ".join(rng.choice(WORDS, int(rng.integers(2, 9)))) for _ in range(40)]
    k_of = {q: int(rng.integers(1, 21)) for q in questions}
    expected = dict(zip(questions, zip(*reference(corpus, questions, 20))))
    answers, errors = [], []

    def client(c):
        try:
            for i in range(25):
                q = questions[(7 * c + i) % len(questions)]
                if i % 2:
                    status, data, _ = request(server, "GET", search_url(q, k_of[q]))
                else:
                    status, data, _ = request(server, "POST", "/search", {"questions": [q], "k": k_of[q]})
                answers.append((status, q, data))
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(answers) == 200
    for status, q, data in answers:
        assert status == 200 and data["questions"] == [q]
        scores, order = expected[q]
        assert_top_k(data["results"], corpus, scores[None], order[None, : k_of[q]], k_of[q])


# ---------------------------------------------------------------------------------------------
# The page in a real browser, on the shipped sample


def chromium_or_skip():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")
    return path


def test_page_shows_the_top_passage_in_chromium(tmp_path):
    browser = chromium_or_skip()
    tsv = os.path.join(ROOT, "data", "sample", "psgs.tsv")
    with open(tsv, encoding="utf-8") as f:
        ids = [int(line.split("\t", 1)[0]) for line in list(f)[1:]]
    emb = np.random.default_rng(2).standard_normal((len(ids), 32)).astype(np.float16)
    model = make_tiny_bert(str(tmp_path / "question_encoder"), role="question")
    emb_dir = write_embedding_dir(str(tmp_path / "emb"), ids, emb, tsv, 1, recorded_encoder(model))
    retriever = Retriever(model, emb_dir, tsv, index_device="cpu")
    with open(os.path.join(ROOT, "data", "sample", "test.qa.csv"), encoding="utf-8") as f:
        question = f.readline().split("\t")[0]
    top = retriever.search([question], 5)[0][0]
    srv = search_dpr.make_server(retriever, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/?" + urllib.parse.urlencode({"q": question, "k": 5})
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(30)
    dom = proc.stdout
    assert proc.returncode == 0 and '<ol id="results">' in dom, proc.stderr[-2000:]
    first = re.search(
        r'<li>.*?<span class="rank">1\.</span>(.*?)</span>.*?<p class="text">(.*?)</p>', dom, re.S
    )
    assert first, dom[-3000:]
    assert first.group(1) == html.escape(top["title"], quote=False) and first.group(2) == html.escape(
        top["text"], quote=False
    )
    assert "5 passages in" in dom and dom.count("<li>") == 5
