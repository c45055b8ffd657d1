"""Answer matching must give DPR's verdict (dpr/data/qa_validation.py has_answer with its SimpleTokenizer).

Every expected verdict below is written by hand from DPR's rules: text and answer are NFD-normalized
(canonical only: no accent stripping, no compatibility folding); tokens are the matches of
`([\\p{L}\\p{N}\\p{M}]+)|([^\\p{Z}\\p{C}])` (a run of letters/digits/marks is one token, every other
character that is not a separator (Z) or control/format/unassigned (C) is its own token, Z and C are
dropped); tokens compared after str.lower(); the answer's tokens must occur contiguously in the
passage's. Regex answers: NFD pattern, case-insensitive `search` (substring), bad pattern = miss.
"""

import os
import re
import sys

import pytest
import regex

from utils.qa import _TOKEN_RE, _words, has_answer, score_passages, top_k_accuracy

S, R = "string", "regex"

# (answers, passage text, match_type, expected, why)
CASES = [
    # --- basics: whole tokens, contiguity, case
    (["Paris"], "The capital of France is Paris.", S, True, "token at end before '.'"),
    (["paris"], "PARIS", S, True, "uncased"),
    (["art"], "a party", S, False, "never a substring of a token"),
    (["the art"], "the arts", S, False, "last token must be whole"),
    (["New York"], "New  \t York", S, True, "any whitespace run separates"),
    (["New York"], "New Jersey York", S, False, "tokens must be contiguous"),
    (["York New"], "New York", S, False, "order matters"),
    (["a b a"], "a b a b a", S, True, "overlapping candidate windows"),
    (["Paris"], "", S, False, "empty passage, non-empty answer"),
    (["Paris"], "Paris", S, True, "answer is the whole passage"),
    # --- punctuation: each character is its own token
    (["Jean Paul"], "Jean-Paul Sartre", S, False, "'-' is a token between jean and paul"),
    (["Jean-Paul"], "Jean Paul Sartre", S, False, "answer has a '-' token the passage lacks"),
    (["Jean-Paul"], "Jean - Paul Sartre", S, True, "spaces around '-' do not matter"),
    (["Jean - Paul"], "Jean-Paul", S, True, "same token sequence"),
    (["1000"], "it cost 1,000 dollars", S, False, "'1' ',' '000' is not '1000'"),
    (["1,000"], "it cost 1,000 dollars", S, True, "same three tokens"),
    (["1 , 000"], "it cost 1,000 dollars", S, True, "same three tokens"),
    (["3.14"], "pi is 3.14159", S, False, "'14159' is one token, not '14'"),
    (["3.14159"], "pi is 3.14159", S, True, "'3' '.' '14159'"),
    (["dont"], "I don't know", S, False, "apostrophe splits: don ' t"),
    (["don ' t"], "I don't know", S, True, "don ' t"),
    (["don't"], "I don\u2019t know", S, False, "has_answer does not map \u2019 to '"),
    (["don"], "I don\u02bct know", S, False, "U+02BC is a letter (Lm): 'don\u02bct' is one token"),
    (["a_b"], "a _ b", S, True, "'_' is punctuation, its own token"),
    (["!!"], "wow!!!", S, True, "each '!' is a token"),
    (["U.S."], "the U.S. army", S, True, "u . s ."),
    (["US"], "the U.S. army", S, False, "u . s . is not us"),
    (["$5"], "costs $ 5", S, True, "'$' and '5'"),
    (["E=mc\u00b2"], "famous E = mc\u00b2 formula", S, True, "superscript two is a digit (No): 'mc\u00b2'"),
    (["mc2"], "E=mc\u00b2", S, False, "no compatibility folding of \u00b2"),
    (["mc"], "E=mc\u00b2", S, False, "'mc\u00b2' is one token"),
    # --- NFD: canonical equivalence only
    (["caf\u00e9"], "Le cafe\u0301 noir", S, True, "precomposed answer, decomposed passage"),
    (["cafe\u0301"], "Le caf\u00e9 noir", S, True, "decomposed answer, precomposed passage"),
    (["cafe"], "Le caf\u00e9 noir", S, False, "no accent stripping: the mark stays in the token"),
    (["caf\u00e9"], "Le cafe noir", S, False, "no accent stripping"),
    (["CAF\u00c9"], "caf\u00e9", S, True, "upper \u00c9 decomposes to E + mark, lower() gives e + mark"),
    (
        ["\u00c5ngstr\u00f6m"],
        "\u212bngstr\u00f6m",
        S,
        True,
        "ANGSTROM SIGN decomposes canonically to A + ring",
    ),
    (["\u03c9"], "\u2126", S, True, "OHM SIGN is canonically \u03a9, lower() \u03c9"),
    (["k"], "\u212a", S, True, "KELVIN SIGN is canonically K"),
    (["fi"], "\ufb01", S, False, "ligature \ufb01 has only a compatibility decomposition"),
    (["\ufb01nal"], "the \ufb01nal", S, True, "same ligature on both sides"),
    (["final"], "the \ufb01nal", S, False, "no NFKD"),
    (["123"], "\uff11\uff12\uff13", S, False, "full-width digits are not ASCII digits"),
    (["\uff11\uff12\uff13"], "room \uff11\uff12\uff13", S, True, "full-width digits match themselves"),
    (["a"], "\uff21", S, False, "full-width A: no compatibility folding"),
    (["\uff41"], "\uff21", S, True, "full-width A lower()s to full-width a"),
    (["d\u017e"], "\u01c5", S, False, "titlecase digraph \u01c5 has only a compatibility decomposition"),
    (["\u01c6"], "\u01c5", S, True, "lower() of \u01c5 is \u01c6 (its NFD is d + z + caron)"),
    (
        ["\ud55c\uad6d"],
        "\u1112\u1161\u11ab\u1100\u116e\u11a8",
        S,
        True,
        "Hangul syllables vs conjoining jamo",
    ),
    (["\ud55c"], "\ud55c\uad6d", S, False, "jamo run is one token"),
    # --- runs of letters/digits/marks are one token
    (["\u6771\u4eac"], "\u6771\u4eac\u90fd\u306b\u4f4f\u3080", S, False, "CJK run is one token"),
    (
        ["\u6771\u4eac\u90fd\u306b\u4f4f\u3080"],
        "\u79c1\u306f \u6771\u4eac\u90fd\u306b\u4f4f\u3080\u3002",
        S,
        True,
        "whole run, then '\u3002' token",
    ),
    (["\u6771\u4eac"], "\u6771\u4eac\u3001\u5927\u962a", S, True, "CJK comma splits the run"),
    (["abc"], "abc\u6771\u4eac", S, False, "latin + CJK letters form one run"),
    (
        ["\u0e44\u0e17\u0e22"],
        "\u0e1b\u0e23\u0e30\u0e40\u0e17\u0e28\u0e44\u0e17\u0e22",
        S,
        False,
        "Thai run is one token",
    ),
    (["1"], "1\u0301", S, False, "combining mark after a digit joins its token"),
    (["1\u0301"], "x 1\u0301 y", S, True, "digit + mark token"),
    (["5"], "5\u20e3", S, False, "enclosing keycap (Me) joins the digit"),
    (["abc123"], "abc123", S, True, "letters and digits in one run"),
    (["abc"], "abc123", S, False, "letters and digits in one run"),
    (["\u2160"], "Henry \u2160", S, True, "Roman numeral (Nl) is a digit token"),
    (["\u2170"], "Henry \u2160", S, True, "lower() of ROMAN NUMERAL ONE"),
    (["-"], "-\u0301", S, True, "punctuation is a one-char token; the mark after it is its own token"),
    (["-\u0301"], "x -\u0301 y", S, True, "same two tokens"),
    (["\u0301"], "-\u0301", S, True, "the lone mark is a token"),
    # --- lower(), not casefold()
    (["strasse"], "Stra\u00dfe", S, False, "lower() keeps \u00df; casefold() would give ss"),
    (["STRASSE"], "strasse", S, True, "ASCII case"),
    (["\u00df"], "\u1e9e", S, True, "capital sharp s lower()s to \u00df"),
    (["stra\u1e9ee"], "STRASSE", S, False, "\u00df is never ss"),
    (
        ["\u03bf\u03b4\u03bf\u03c2"],
        "\u039f\u0394\u039f\u03a3",
        S,
        True,
        "lower() gives final sigma at word end",
    ),
    (
        ["\u03bf\u03b4\u03bf\u03c3"],
        "\u039f\u0394\u039f\u03a3",
        S,
        False,
        "\u03c3 != final \u03c2 (casefold would equate)",
    ),
    (["\u03c3"], "\u03a3", S, True, "a lone capital sigma lower()s to \u03c3"),
    (["istanbul"], "\u0130stanbul", S, False, "\u0130 is I + dot above after NFD: token 'i\u0307stanbul'"),
    (["i\u0307stanbul"], "\u0130STANBUL", S, True, "both sides i + U+0307 + stanbul"),
    (["\u0130stanbul"], "i\u0307stanbul", S, True, "both sides i + U+0307 + stanbul"),
    (["\u0131stanbul"], "Istanbul", S, False, "dotless \u0131 is not i"),
    (["ISTANBUL"], "\u0131stanbul", S, False, "lower() of I is i, not \u0131"),
    # --- separators (Z) and control/format/unassigned (C) are dropped
    (["New York"], "New\u00a0York", S, True, "no-break space (Zs) separates"),
    (["NewYork"], "New\u00a0York", S, False, "no-break space still splits"),
    (["New York"], "New\u202fYork", S, True, "narrow no-break space (Zs)"),
    (["New York"], "New\u3000York", S, True, "ideographic space (Zs)"),
    (["New York"], "New\u2028York", S, True, "line separator (Zl)"),
    (["New York"], "New\u2029York", S, True, "paragraph separator (Zp)"),
    (["ab cd"], "ab\u200bcd", S, True, "zero-width space is Cf: dropped, but it splits the run"),
    (["abcd"], "ab\u200bcd", S, False, "zero-width space splits the run"),
    (["co operate"], "co\u00adoperate", S, True, "soft hyphen is Cf: dropped, splits"),
    (["cooperate"], "co\u00adoperate", S, False, "soft hyphen splits"),
    (["ab cd"], "ab\x00cd", S, True, "NUL (Cc) splits"),
    (["ab cd"], "ab\ue000cd", S, True, "private use (Co) splits"),
    (["ab cd"], "ab\uffffcd", S, True, "noncharacter (Cn) splits"),
    (["ab cd"], "\ufeffab\ufeffcd", S, True, "BOM (Cf) dropped"),
    (["Paris"], "in\nParis\r\n", S, True, "newlines are Cc"),
    # --- emoji and symbols
    (["\u2764"], "I \u2764 NY", S, True, "a symbol is its own token"),
    (["\u2764"], "I \u2764\ufe0f NY", S, True, "variation selector (Mn) is a separate token after a symbol"),
    (["\u2764\ufe0f"], "I \u2764 NY", S, False, "answer has the extra variation-selector token"),
    (["\U0001f44d"], "\U0001f44d\U0001f3fd", S, True, "skin-tone modifier (Sk) is its own token"),
    (
        ["\U0001f468 \U0001f469"],
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",
        S,
        True,
        "ZWJ (Cf) dropped between emoji",
    ),
    (["\U0001f468\u200d\U0001f469"], "\U0001f468 \U0001f469", S, True, "ZWJ in the answer dropped too"),
    (["\U0001f469\U0001f468"], "\U0001f468\U0001f469", S, False, "order of one-char tokens"),
    # --- empty / blank answers, several answers
    ([""], "anything at all", S, True, "empty answer has no tokens: matches every passage"),
    ([""], "", S, True, "even the empty passage"),
    (["   "], "", S, True, "blank answer has no tokens"),
    (["\u200b\u00a0"], "x", S, True, "answer of only Cf/Zs has no tokens"),
    ([], "Paris", S, False, "no answers never match"),
    (["London", "Paris"], "Paris", S, True, "any answer matching is enough"),
    (["London", "Rome"], "Paris", S, False, "none match"),
    (["London", ""], "Paris", S, True, "an empty alternative matches"),
    # --- regex mode: case-insensitive search of the NFD text
    (["art"], "a party", R, True, "regex is a substring search"),
    (["PARIS"], "paris", R, True, "case-insensitive"),
    (["^Paris"], "hello\nParis", R, True, "MULTILINE: ^ after a newline"),
    (["hello$"], "hello\nParis", R, True, "MULTILINE: $ before a newline"),
    (["^Paris"], "hello Paris", R, False, "anchored, not at a line start"),
    (["Jean[- ]Paul"], "jean-paul", R, True, "character class"),
    (["\\d{4}"], "in 1999", R, True, "digits"),
    (["\\d{4}"], "in 999", R, False, "too few digits"),
    (["("], "(", R, False, "invalid pattern is a miss, not an error"),
    (["[a-"], "[a-", R, False, "invalid pattern"),
    (["(", "Par"], "Paris", R, True, "a later valid pattern still counts"),
    ([""], "", R, True, "empty pattern matches"),
    (["caf\u00e9"], "cafe\u0301", R, True, "pattern NFD-normalized like the text"),
    (["cafe\u0301"], "caf\u00e9", R, True, "text NFD-normalized"),
    (["caf."], "caf\u00e9", R, True, "'.' matches the bare e of the NFD text"),
    (["caf.$"], "caf\u00e9", R, False, "the combining mark follows the e in NFD"),
    (["caf\u00e9$"], "caf\u00e9", R, True, "both NFD"),
    (["fi"], "\ufb01", R, False, "no compatibility folding in regex mode either"),
    (["stra\u00dfe"], "STRASSE", R, False, "regex IGNORECASE folds simply (no FULLCASE): \u00df is not ss"),
    (["\u00df"], "\u1e9e", R, True, "simple case folding pairs \u1e9e and \u00df"),
    (["\u03c3"], "\u03c2", R, True, "simple case folding pairs final and medial sigma"),
]


@pytest.mark.parametrize("answers,text,match_type,expected,why", CASES, ids=[c[4] for c in CASES])
def test_has_answer_matches_dpr(answers, text, match_type, expected, why):
    assert has_answer(answers, text, match_type) is expected, why


def test_default_match_type_is_string():
    assert has_answer(["art"], "a party") is False  # a regex search would say True
    assert has_answer(["party"], "a party") is True


def test_unknown_match_type_raises():
    # DPR silently returns False for an unknown match type; a typo here would zero every top-k.
    with pytest.raises(ValueError):
        has_answer(["x"], "x", "strng")


def test_only_passage_text_is_searched():
    """has_answer takes the passage text only: callers pass ctx text, never title + text."""
    import inspect

    assert list(inspect.signature(has_answer).parameters) == ["answers", "text", "match_type"]


def _dpr_token_re(flags):
    return regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=flags)


def _all_code_points():
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


def test_tokenizer_equals_dpr_regex_on_every_code_point():
    """Every code point, in one string: our tokens equal DPR's regex tokens lower()ed. IGNORECASE
    (which DPR sets) does not change which characters fall in either class."""
    text = _all_code_points()
    dpr = _dpr_token_re(regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
    no_case = _dpr_token_re(regex.UNICODE | regex.MULTILINE)
    expected = [m.group() for m in dpr.finditer(text)]
    assert [m.group() for m in no_case.finditer(text)] == expected
    assert _words(text) == [t.lower() for t in expected]
    assert _TOKEN_RE.flags & regex.IGNORECASE


def test_single_code_point_tokens_by_category():
    """Each code point alone: letters/digits/marks → one token, Z/C → none, everything else → itself."""
    import unicodedata

    for c in map(chr, range(0x3000)):  # Latin, Greek, Cyrillic, punctuation, symbols, CJK punctuation
        cat = unicodedata.category(c)
        if cat == "Cn":  # regex may know a newer Unicode than this Python's unicodedata
            continue
        expected = [] if cat[0] in "ZC" else [c.lower()]
        assert _words(c) == expected, (hex(ord(c)), cat)


# ---------------------------------------------------------------------------------------------
# top-k accuracy and the parallel scorer


def test_top_k_accuracy_hand_computed():
    hits = [
        [False, True, False],  # first hit at rank 2
        [True, True, True],  # rank 1
        [False, False, False],  # none
        [False, False, True],  # rank 3
    ]
    acc = top_k_accuracy(hits, [1, 2, 3, 5, 100])
    assert acc == {1: 1 / 4, 2: 2 / 4, 3: 3 / 4, 5: 3 / 4, 100: 3 / 4}


def test_top_k_accuracy_no_hits_and_short_lists():
    assert top_k_accuracy([[False] * 4, []], [1, 20]) == {1: 0.0, 20: 0.0}
    assert top_k_accuracy([[True]], [1, 5]) == {1: 1.0, 5: 1.0}
    with pytest.raises(ValueError):
        top_k_accuracy([], [1])


@pytest.mark.parametrize("num_workers", [1, 2])
def test_score_passages_equals_sequential_loop(num_workers):
    answers = [c[0] for c in CASES if c[2] == S]
    texts = [c[1] for c in CASES if c[2] == S]
    # question i retrieves all passages, rotated by i: every (answers, passage) pair is scored
    passages = [texts[i:] + texts[:i] for i in range(len(answers))]
    expected = [[has_answer(a, t) for t in p] for a, p in zip(answers, passages)]
    assert score_passages(answers, passages, "string", num_workers=num_workers) == expected
    # and the diagonal is the hand-written verdict table
    got = score_passages(answers, passages, "string", num_workers=num_workers)
    assert [row[0] for row in got] == [c[3] for c in CASES if c[2] == S]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_score_passages_regex_and_edge_shapes(num_workers):
    cases = [c for c in CASES if c[2] == R]
    got = score_passages([c[0] for c in cases], [[c[1], c[1]] for c in cases], "regex", num_workers)
    assert got == [[c[3], c[3]] for c in cases]
    assert score_passages([], [], "string", num_workers) == []
    assert score_passages([["x"]], [[]], "string", num_workers) == [[]]


# ---------------------------------------------------------------------------------------------
# Never eval() data


def test_no_bare_eval_call_in_repo():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bare_eval = re.compile(r"(?<![\w.])eval\s*\(")  # not .eval() (torch), not literal_eval(
    offenders = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "node_modules")
        ]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    for no, line in enumerate(f, 1):
                        if bare_eval.search(line.split("#", 1)[0]) and path != os.path.abspath(__file__):
                            offenders.append(f"{os.path.relpath(path, root)}:{no}: {line.strip()}")
    assert not offenders, "eval() on data is forbidden:\n" + "\n".join(offenders)


def test_eval_scanner_pattern():
    bare_eval = re.compile(r"(?<![\w.])eval\s*\(")
    assert bare_eval.search("x = eval(row[1])")
    assert bare_eval.search("answers=eval (s)")
    assert not bare_eval.search("model.eval()")
    assert not bare_eval.search("ast.literal_eval(s)")
    assert not bare_eval.search("self.evaluate(x)")
