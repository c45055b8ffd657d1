"""DPR's file formats: passages TSV, biencoder JSON, qas CSV, retrieval results JSON (no torch here).

Everything streams: the 21M-row passage file and the multi-GB training JSON are never held whole.
Malformed input raises DataError naming the file and the line (TSV/CSV) or record (JSON).
"""

import ast
import csv
import itertools
import json
import os
import sys
import zipfile

import ijson
import numpy as np

from utils.errors import DataError
from utils.files import atomic_write

csv.field_size_limit(sys.maxsize)

# The NQ recipe's files where the bare commands (doc2embedding.py, test_dpr.py) look for them (RECIPE), and
# the command that makes each, named when one is missing
_GET = "download it with: python utils/download_data.py --resource data."
_TRAIN = "train it with: accelerate launch train_dpr.py"
MADE_BY = {
    "downloads/data/wikipedia_split/psgs_w100.tsv": _GET + "wikipedia_split.psgs_w100",
    "downloads/data/retriever/qas/nq-test.csv": _GET + "retriever.qas.nq-test",
    "outputs/dpr_nq/best/query_encoder": _TRAIN,
    "outputs/dpr_nq/best/doc_encoder": _TRAIN,
    "outputs/dpr_nq/embeddings": "make them with: accelerate launch doc2embedding.py",
}
RECIPE = dict(zip(("passages", "questions", "query_encoder", "doc_encoder", "embeddings"), MADE_BY))


def check_made(*paths):
    """A missing input of the recipe is one line naming the command that makes it."""
    for path in paths:
        if path in MADE_BY and not os.path.exists(path):
            raise DataError(f"{path}: not found; {MADE_BY[path]}")


def normalize_question(question):
    """DPR's normalize_question (biencoder_data.py): applied once to every question as it is read, at train
    (iter_biencoder) and test time (test_dpr.py)."""
    return question.replace("\u2019", "'")


# ---------------------------------------------------------------------------------------------
# Passages TSV (psgs_w100.tsv): header `id<TAB>text<TAB>title`, one passage per line


def parse_passage_line(line, path, line_no):
    """(id, text, title) from one raw line (bytes), as DPR's CsvCtxSrc reads it (csv field, '"' stripped)."""
    try:
        line = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not UTF-8 ({e.reason} at byte {e.start})") from None
    row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])
    if len(row) != 3:
        raise DataError(
            f"{path}:{line_no}: expected 3 tab-separated columns (id, text, title), got {len(row)}"
        )
    try:
        pid = int(row[0])
    except ValueError:
        raise DataError(f"{path}:{line_no}: passage id {row[0]!r} is not an integer") from None
    return pid, row[1].strip('"'), row[2]


def _open_passages(path):
    """The passage file, opened in binary and positioned after its (checked) header."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: passage file not found")
    f = open(path, "rb")
    header = f.readline()
    if header.rstrip(b"\r\n").split(b"\t")[:1] != [b"id"]:
        f.close()
        raise DataError(f"{path}:1: expected the header 'id<TAB>text<TAB>title', got {header[:80]!r}")
    return f


def iter_passage_lines(path, start=None, end=None, line_no=None):
    """Yield (line_no, raw line bytes, byte offset after it) for the non-blank rows whose line starts
    in byte range [start, end), unparsed: a reader that skips rows (another worker's) pays no parsing.

    With no range, the whole file after the header. A range lets each process stream its own
    contiguous shard; the line number at `start` is counted unless the caller knows it (`line_no`).
    """
    with _open_passages(path) as f:
        body = f.tell()
        if start is not None and start > body:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # start is inside a line: that row belongs to the range before
        if line_no is None:
            line_no = 2 + count_lines(path, body, f.tell())
        pos = f.tell()
        for raw in f:
            if end is not None and pos >= end:
                break
            pos += len(raw)
            if raw.strip():
                yield line_no, raw, pos
            line_no += 1


def iter_passages(path, start=None, end=None):
    """Yield (line_no, id, text, title) for the rows whose line starts in byte range [start, end)."""
    for line_no, raw, _ in iter_passage_lines(path, start, end):
        yield (line_no, *parse_passage_line(raw, path, line_no))


def count_lines(path, start=0, end=None):
    """Newlines in byte range [start, end), read in 16 MB blocks."""
    n, left = 0, (os.path.getsize(path) if end is None else end) - start
    with open(path, "rb") as f:
        f.seek(start)
        while left > 0 and (block := f.read(min(1 << 24, left))):
            n += block.count(b"\n")
            left -= len(block)
    return n


def shard_byte_range(path, rank, world_size):
    """Contiguous byte range of the data rows for one process, cut at line starts."""
    with _open_passages(path) as f:
        size, body = os.path.getsize(path), f.tell()
        cuts = [body]
        for r in range(1, world_size):
            f.seek(body + (size - body) * r // world_size)
            f.readline()  # move to the next line start
            cuts.append(max(f.tell(), cuts[-1]))
        cuts.append(size)
    return cuts[rank], cuts[rank + 1]


def passage_shard(path, rank, world_size, limit=None):
    """(start byte, end byte, line number at start, passage count or None) of one process's rows.

    Without a limit, shard_byte_range's contiguous byte range. With one, the file's first `limit`
    passages split by count; finding where this process's part starts takes one scan of the rows before it.
    """
    if limit is None:
        start, end = shard_byte_range(path, rank, world_size)
        return start, end, 1 + count_lines(path, 0, start), None
    skip = limit * rank // world_size
    start, line_no = shard_byte_range(path, 0, 1)[0], 2
    for n, _, after in itertools.islice(iter_passage_lines(path, line_no=2), skip):
        start, line_no = after, n + 1
    return start, os.path.getsize(path), line_no, limit * (rank + 1) // world_size - skip


class PassageStore:
    """Random access to passages by id through a byte-offset index, without loading the corpus.

    The index is built once (one streaming pass) and saved as `<index_path>` (.npz). When ids are
    consecutive in file order (psgs_w100: 1..21,015,324) only the offsets are kept: 8 bytes/row;
    otherwise the sorted ids with their offsets: 16 bytes/row. Building peaks at ~32 bytes/row
    (~0.7 GB for psgs_w100).
    """

    def __init__(self, path, index_path=None):
        if not os.path.isfile(path):
            raise DataError(f"{path}: passage file not found")
        self.path = path
        self.index_path = index_path or path + ".offsets.npz"
        st = os.stat(path)
        # nanosecond mtime: a file rewritten within the same second must not reuse a stale index
        stamp = np.array([st.st_size, st.st_mtime_ns], dtype=np.int64)
        if os.path.exists(self.index_path):
            try:
                with np.load(self.index_path) as z:
                    if np.array_equal(z["stamp"], stamp):
                        self.first_id, self.ids, self.offsets = int(z["first_id"]), z["ids"], z["offsets"]
                        return
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # an unreadable index (e.g. killed mid-write): rebuild it
        self._build(stamp)

    def _build(self, stamp):
        rows = np.fromiter(self._scan(), dtype=[("id", np.int64), ("offset", np.int64)])
        # contiguous: argsort would copy a strided column
        ids, offsets = (rows["id"].copy(), rows["offset"].copy())
        del rows
        n = len(ids)
        # strictly increasing integers spanning n values are exactly first, first+1, ...
        if n == 0 or (ids[-1] - ids[0] == n - 1 and (ids[1:] > ids[:-1]).all()):
            self.first_id, self.ids = int(ids[0]) if n else 0, np.zeros(0, np.int64)
        else:
            offsets = offsets[np.argsort(ids)]
            ids.sort()
            dup = ids[1:][ids[1:] == ids[:-1]]
            if len(dup):
                raise DataError(f"{self.path}: passage id {dup[0]} occurs more than once")
            self.first_id, self.ids = 0, ids
        self.offsets = offsets
        with atomic_write(self.index_path, "wb") as f:
            np.savez(f, stamp=stamp, first_id=self.first_id, ids=self.ids, offsets=self.offsets)

    def _scan(self):
        """(id, byte offset) of every row; only the id column is parsed."""
        for line_no, raw, after in iter_passage_lines(self.path, line_no=2):
            tab = raw.find(b"\t")
            if tab < 0:
                raise DataError(
                    f"{self.path}:{line_no}: expected 3 tab-separated columns (id, text, title), got 1"
                )
            try:
                yield int(raw[:tab]), after - len(raw)
            except ValueError:
                raise DataError(
                    f"{self.path}:{line_no}: passage id {raw[:tab][:40]!r} is not an integer"
                ) from None

    def __len__(self):
        return len(self.offsets)

    def get_passages(self, ids):
        """[(id, text, title)] for `ids`, in the order asked; reads only those rows (seeks in file order)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(self.ids) == 0:  # consecutive ids: the row is id - first_id
            rows = ids - self.first_id
            found = (rows >= 0) & (rows < len(self.offsets))
        else:
            rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
            found = self.ids[rows] == ids
        if not found.all():
            raise DataError(
                f"{self.path}: passage id(s) {ids[~found][:5].tolist()} not found ({(~found).sum()} missing)"
            )
        offsets = self.offsets[rows]
        out = [None] * len(rows)
        with open(self.path, "rb") as f:
            for i in np.argsort(offsets, kind="stable"):
                f.seek(int(offsets[i]))
                out[i] = parse_passage_line(f.readline(), self.path, f"byte {int(offsets[i])}")
                if out[i][0] != ids[i]:  # the file changed under an index with a matching stamp
                    raise DataError(
                        f"{self.path}: index {self.index_path} is stale (id {int(ids[i])} "
                        f"points at a row with id {out[i][0]}); delete the index to rebuild it"
                    )
        return out


# ---------------------------------------------------------------------------------------------
# Biencoder JSON (biencoder-nq-*.json): a JSON list of question records


def iter_json_list(path, block_size=1 << 16):
    """Yield the items of a top-level JSON list one at a time: a streaming json.load, by ijson (C backend).

    Numbers come back as json.load gives them: int, or float (use_float; not Decimal). yajl is strict:
    integers beyond 64 bits and NaN/Infinity (which json.load accepts) are errors; DPR's files hold none.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    index = 0  # items yielded so far: a parse error is in the item after them (or after the list)
    with open(path, "rb") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        if first != b"[":  # ijson.items would yield nothing from an object or a string
            raise DataError(
                f"{path}: expected a JSON list, found {repr(chr(first[0])) if first else 'end of file'}"
            )
        f.seek(0)
        try:
            for item in ijson.items(f, "item", buf_size=block_size, use_float=True):
                yield item
                index += 1
        except ijson.JSONError as e:
            reason = e.args[0].decode(errors="replace") if isinstance(e.args[0], bytes) else str(e.args[0])
            raise DataError(f"{path}: record {index}: {reason.splitlines()[0]}") from None


CTX_LISTS = ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs")


def check_record(rec, where):
    """A biencoder record: a 'question' string, a 'positive_ctxs' list, each ctx a dict with a 'text'
    string."""
    question, positives = (
        (rec.get("question"), rec.get("positive_ctxs")) if isinstance(rec, dict) else (None, None)
    )
    if not (isinstance(question, str) and isinstance(positives, list)):
        raise DataError(f"{where}: needs 'question' (a string) and 'positive_ctxs' (a list)")
    for key in CTX_LISTS:
        if not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in rec.get(key) or []):
            raise DataError(f"{where}: every ctx in {key} needs a 'text' string")


def check_answers(answers, where, usable=False):
    """A list of strings; `usable`: non-empty and none blank, for tools that label passages with has_answer
    (DPR's has_answer matches any text for an answer with no tokens)."""
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: answers must be a list of strings, got {str(answers)[:60]}")
    if usable and not (answers and all(a.strip() for a in answers)):
        raise DataError(
            f"{where}: answers must be a non-empty list of non-empty strings, got {str(answers)[:60]}"
        )


def iter_biencoder(path, stats=None):
    """Yield {question, answers, positive_ctxs, negative_ctxs, hard_negative_ctxs} records, questions
    normalized, ctxs reduced to {title, text}. Records with no positive ctx are skipped (as DPR does) and
    counted in stats['skipped']."""
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    for index, rec in enumerate(iter_json_list(path)):
        check_record(rec, f"{path}: record {index}")
        if not rec["positive_ctxs"]:
            stats["skipped"] += 1
            continue
        ctxs = {
            key: [{"title": c.get("title") or "", "text": c["text"]} for c in rec.get(key) or []]
            for key in CTX_LISTS
        }
        yield {"question": normalize_question(rec["question"]), "answers": rec.get("answers", []), **ctxs}


def iter_labelled_records(path):
    """A biencoder JSON's records as they are, for the tools that rewrite them: checked, answers usable."""
    for index, rec in enumerate(iter_json_list(path)):
        check_record(rec, f"{path}: record {index}")
        check_answers(rec.get("answers"), f"{path}: record {index}", usable=True)
        yield rec


def write_json_list(path, records):
    """A biencoder JSON list written one record at a time, at `path` only once complete. Returns the count."""
    n = 0
    with atomic_write(path) as f:
        f.write("[")
        for n, rec in enumerate(records, 1):
            f.write(",\n" if n > 1 else "\n")
            json.dump(rec, f, ensure_ascii=False)
        f.write("\n]\n")
    return n


def passage_key(ctx):
    """A ctx's passage id as psgs_w100's integer id string: DPR's own results write 'wiki:123'."""
    pid = ctx.get("passage_id", ctx.get("id"))
    return None if pid is None else str(pid).removeprefix("wiki:")


def same_passage_file(ctx, positive, where):
    """A ctx and a positive with one id must have one text, else they come from different passage files.
    Texts are compared up to whitespace and the '"' at their ends: test_dpr.py reads passages as DPR's
    CsvCtxSrc does (text.strip('"')), while a biencoder JSON may hold the csv field as is (mini-NQ's does)."""
    if " ".join(ctx["text"].split()).strip('" ') != " ".join(positive["text"].split()).strip('" '):
        raise DataError(
            f"{where}: passage id {passage_key(positive)} has another text than the train file's positive "
            f"({ctx['text'][:40]!r} vs {positive['text'][:40]!r}): made over another passage file?"
        )


# ---------------------------------------------------------------------------------------------
# qas CSV (nq-test.qa.csv): `question<TAB>['answer', ...]`, no header; or a biencoder JSON's questions


def read_qas(path):
    """[(question, answers)] from a qas CSV (answer lists parsed with ast.literal_eval, never eval), or
    from a biencoder JSON: every record in file order, so a model retrieves for its training questions."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: qa file not found")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if path.endswith(".json") or (head[:1] == b"[" and head[1:].lstrip()[:1] in (b"{", b"]")):
        qas = [_json_qa(rec, path, index) for index, rec in enumerate(iter_json_list(path))]
    else:
        qas = _read_qas_csv(path)
    if not qas:
        raise DataError(f"{path}: no questions in qa file")
    return qas


def _json_qa(rec, path, index):
    if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
        raise DataError(
            f"{path}: record {index}: needs 'question' (a string) and 'answers' (a list of strings)"
        )
    check_answers(rec.get("answers"), f"{path}: record {index}")
    return rec["question"], rec["answers"]


def _read_qas_csv(path):
    qas = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        line_no = 1  # physical line where the current row starts (a quoted field may span lines)
        try:
            for row in reader:
                if row:
                    qas.append((row[0], _parse_answers(row, path, line_no)))
                line_no = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"{path}:{line_no}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{line_no}: not UTF-8 ({e.reason})") from None
    return qas


def _parse_answers(row, path, line_no):
    if len(row) != 2:
        raise DataError(f"{path}:{line_no}: expected 'question<TAB>answers', got {len(row)} columns")
    try:
        answers = ast.literal_eval(row[1])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DataError(f"{path}:{line_no}: answers {row[1][:60]!r} is not a Python list literal") from None
    check_answers(answers, f"{path}:{line_no}")
    return answers


# ---------------------------------------------------------------------------------------------
# Retrieval results JSON, DPR's dense_retriever output:
# [{question, answers, ctxs: [{id, title, text, score, has_answer}]}]


def write_results(path, results):
    with atomic_write(path) as f:
        json.dump(results, f, ensure_ascii=False, indent=1)


def write_run(path, ids, scores, tag):
    """TREC run file (trec_eval, pyserini): `qid Q0 docid rank score tag`, qid the question's 0-based row
    in the qa file, docid the passage id, rank from 1, score as in the results JSON."""
    with atomic_write(path) as f:
        for qid, (row_ids, row_scores) in enumerate(zip(ids, scores)):
            f.writelines(
                f"{qid} Q0 {pid} {rank} {score!s} {tag}\n"
                for rank, (pid, score) in enumerate(zip(row_ids, row_scores), 1)
            )


def iter_results(path):
    """A results JSON's records one at a time, each checked: question, answers, ctxs with DPR's keys."""
    for index, rec in enumerate(iter_json_list(path)):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: record {index}: expected an object, got {type(rec).__name__}")
        for key in ("question", "answers", "ctxs"):
            if key not in rec:
                raise DataError(f"{path}: record {index}: missing key {key!r}")
        if not isinstance(rec["question"], str) or not isinstance(rec["ctxs"], list):
            raise DataError(f"{path}: record {index}: needs 'question' (a string) and 'ctxs' (a list)")
        for ctx in rec["ctxs"]:
            missing = {"id", "title", "text", "score", "has_answer"} - set(
                ctx if isinstance(ctx, dict) else ()
            )
            if missing:
                raise DataError(f"{path}: record {index}: ctx missing {sorted(missing)}")
        yield rec


def read_results(path):
    return list(iter_results(path))
