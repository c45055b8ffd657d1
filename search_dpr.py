"""Ask a DPR retriever questions: top-k passages on the command line, or an HTTP API and a web page.

python search_dpr.py "who wrote hamlet"      # the NQ recipe's retriever (outputs/dpr_nq), as test_dpr.py
python search_dpr.py --embedding_dir D --pretrained_model_path Q --wikipedia_path P --serve [--port 8000]

The model, embedding, passage and index options are test_dpr.py's, and so is the retrieval path
(utils/retriever.py): the server answers what the evaluation measured. --serve answers
  GET  /search?q=...&k=10                    one question
  POST /search {"questions": [...], "k": 10}  up to MAX_QUESTIONS questions
  GET  /health                                passages, index, batches so far;  GET /  the search page
with {"questions", "k", "results": [[{"id", "title", "text", "score"}, ...]], "took_ms"}, or a 4xx/5xx
{"error": "..."}. Requests that arrive together are answered as one batch (micro-batching, docs/serving.md).
"""

import argparse
import json
import os
import sys
import textwrap
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from utils.errors import HelpFormatter, NanoDPRError
from utils.formats import check_made
from utils.retriever import Batcher, Retriever, add_retriever_args

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "utils", "search_page.html")
MAX_QUESTIONS, MAX_CHARS = 64, 1000  # per request; a question longer than 1,000 characters is not a question
MAX_BODY = 1 << 20  # bytes: 64 questions of 1,000 \u-escaped characters fit
# an over-long body is read (and dropped) up to this much, so that the client gets the 413, not a reset
DRAIN = 4 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("questions", nargs="*", help="questions to answer on the command line")
    add_retriever_args(p)  # model, embeddings, passages, index: test_dpr.py's options and defaults
    p.add_argument("--top_k", type=int, default=10, help="passages per question (the server: default k)")
    # the server
    p.add_argument("--serve", action="store_true", help="answer HTTP requests (and serve the search page)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 opens the server to the network")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--max_k", type=int, default=100, help="largest k a request may ask for")
    p.add_argument("--max_batch", type=int, default=32, help="questions answered together; 1: one at a time")
    p.add_argument(
        "--max_wait_ms", type=float, default=2.0, help="a batch waits this long for more questions"
    )
    args = p.parse_args(argv)
    if args.serve == bool(args.questions):
        p.error("give questions to answer, or --serve (not both)")
    if args.index_path and args.index.split(":")[0] == "flat":
        p.error(
            "--index_path saves a faiss index_factory index; --index flat searches the embeddings as they are"
        )
    if min(args.top_k, args.max_k, args.max_batch) < 1 or args.max_wait_ms < 0:
        p.error("--top_k, --max_k and --max_batch must be at least 1, --max_wait_ms at least 0")
    return args


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_search(questions, k, max_k):
    """The questions and k of a search request, or BadRequest saying what is wrong."""
    if not isinstance(questions, list) or not questions:
        raise BadRequest(400, '"questions" must be a non-empty list of strings')
    if len(questions) > MAX_QUESTIONS:
        raise BadRequest(400, f"{len(questions)} questions: at most {MAX_QUESTIONS} per request")
    for i, q in enumerate(questions):
        if not isinstance(q, str):
            raise BadRequest(400, f"question {i} is a {type(q).__name__}, not a string")
        if not q.strip():
            raise BadRequest(400, f"question {i} is empty")
        if len(q) > MAX_CHARS:
            raise BadRequest(400, f"question {i} has {len(q)} characters: at most {MAX_CHARS}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadRequest(400, f"k must be an integer from 1 to {max_k}, got {k!r}")
    return questions, k


class Handler(BaseHTTPRequestHandler):
    """GET /, /health, /search?q=&k=; POST /search. self.server carries batcher, max_k, default_k, page."""

    server_version, timeout = "nanoDPR", 30  # a client that stops sending frees its thread after 30 s
    PATHS = {"/": "GET", "/health": "GET", "/search": "GET, POST"}

    def do_GET(self):
        self.respond(self.get)

    def do_POST(self):
        self.respond(self.post)

    def do_other(self):
        self.respond(lambda path: self.allowed(path, "none"))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_other

    def allowed(self, path, method):
        if path not in self.PATHS:
            raise BadRequest(404, f"no such path: {path} (try /, /health, /search)")
        if method not in self.PATHS[path]:
            raise BadRequest(405, f"{self.command} {path}: use {self.PATHS[path]}")

    def get(self, path):
        self.allowed(path, "GET")
        srv = self.server
        if path == "/":
            return 200, srv.page, "text/html; charset=utf-8"
        if path == "/health":
            r, b = srv.batcher.retriever, srv.batcher
            info = {"passages": len(r), "dim": r.dim, "index": r.index_name, "model": r.model_path}
            stats = {"max_k": srv.max_k, "batches": b.batches, "questions": b.questions}
            return 200, {"status": "ok", **info, **stats}, None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
        if set(query) - {"q", "k"} or len(query.get("q", [])) != 1 or len(query.get("k", [])) > 1:
            raise BadRequest(400, "ask as /search?q=QUESTION&k=K (one q, k optional)")
        k = query.get("k", [str(srv.default_k)])[0]
        return self.search(query["q"], int(k) if k.isascii() and k.isdigit() else k)

    def post(self, path):
        self.allowed(path, "POST")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise BadRequest(411, "POST /search needs a Content-Length header")
        if int(length) > MAX_BODY:
            self.rfile.read(min(int(length), DRAIN))
            self.close_connection = True
            raise BadRequest(413, f"body of {int(length):,} bytes: at most {MAX_BODY:,}")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError as e:  # also bad UTF-8
            raise BadRequest(400, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict) or "questions" not in body or set(body) - {"questions", "k"}:
            raise BadRequest(400, 'body must be a JSON object {"questions": [...], "k": K} (k optional)')
        return self.search(body["questions"], body.get("k", self.server.default_k))

    def search(self, questions, k):
        start = time.perf_counter()
        questions, k = check_search(questions, k, self.server.max_k)
        results = self.server.batcher.search(questions, k)
        took = round(1000 * (time.perf_counter() - start), 2)
        return 200, {"questions": questions, "k": k, "results": results, "took_ms": took}, None

    def respond(self, handle):
        path = urllib.parse.urlsplit(self.path).path
        try:
            status, body, kind = handle(path)
        except BadRequest as e:
            status, body, kind = e.status, {"error": str(e)}, None
        except Exception as e:  # noqa: BLE001 -- the server's fault (index, passage file), not the request's
            status, body, kind = 500, {"error": f"{type(e).__name__}: {e}"}, None
        data = body if kind else json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", self.PATHS[path])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def make_server(retriever, host="127.0.0.1", port=8000, max_batch=32, max_wait_ms=2.0, max_k=100, k=10):
    """A ThreadingHTTPServer answering through one Batcher; port 0: a free one (server.server_address)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.batcher = Batcher(retriever, max_batch, max_wait_ms / 1000)
    server.max_k, server.default_k = min(max_k, len(retriever)), min(k, max_k, len(retriever))
    with open(PAGE, "rb") as f:
        server.page = f.read()
    return server


def print_results(questions, results):
    for question, passages in zip(questions, results):
        print(f"\n{question}")
        for rank, p in enumerate(passages, 1):
            print(f"{rank:3d}. {p['title']}  (score {p['score']:.2f}, id {p['id']})")
            print(textwrap.indent(textwrap.shorten(p["text"], 200, placeholder=" ..."), "     "))


def main(argv=None):
    args = parse_args(argv)
    try:
        check_made(args.embedding_dir, args.pretrained_model_path, args.wikipedia_path)
        retriever = Retriever.from_args(args)
        loaded = f"{len(retriever):,} passages, {retriever.index_name}, encoder on {retriever.device}"
        print(loaded, file=sys.stderr)
        # a first search also checks that the encoder's vectors match the embeddings
        results = retriever.search(args.questions or ["warm up"], args.top_k)
    except NanoDPRError as e:
        sys.exit(f"error: {e}")
    if not args.serve:
        return print_results(args.questions, results)
    limits = (args.max_batch, args.max_wait_ms, args.max_k, args.top_k)
    server = make_server(retriever, args.host, args.port, *limits)
    print(f"serving on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
