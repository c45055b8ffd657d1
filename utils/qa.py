"""Answer matching and top-k accuracy, with DPR's exact semantics (dpr/data/qa_validation.py).

A passage "has the answer" when the answer's token sequence occurs contiguously in the passage's
token sequence. Tokens come from DPR's SimpleTokenizer: NFD-normalized text, runs of
letters/digits/marks are one token, every other non-space, non-control character is its own
token, compared lower-cased. Only the passage text is searched, never the title.
"""

import multiprocessing
import unicodedata

import regex

# DPR's SimpleTokenizer token classes: ALPHA_NUM then NON_WS, same flags.
_TOKEN_RE = regex.compile(
    r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE
)


def _normalize(text):
    return unicodedata.normalize("NFD", text)


def _words(text):
    """DPR's Tokens.words(uncased=True): str.lower(), not casefold()."""
    return [m.group().lower() for m in _TOKEN_RE.finditer(text)]


def _regex_match(text, pattern):
    try:
        pattern = regex.compile(pattern, flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
    except Exception:  # DPR counts an invalid pattern as a miss
        return False
    return pattern.search(text) is not None


def has_answer(answers, text, match_type="string"):
    """True if any answer occurs in `text` (DPR's has_answer; an empty answer matches anything)."""
    text = _normalize(text)
    if match_type == "string":
        words = _words(text)
        for answer in answers:
            answer = _words(_normalize(answer))
            n = len(answer)
            for i in range(len(words) - n + 1):
                if words[i : i + n] == answer:
                    return True
        return False
    if match_type == "regex":
        return any(_regex_match(text, _normalize(answer)) for answer in answers)
    raise ValueError(f"match_type must be 'string' or 'regex', got {match_type!r}")


def _check_question(args):
    answers, texts, match_type = args
    return [has_answer(answers, text, match_type) for text in texts]


def score_passages(answers, passage_texts, match_type="string", num_workers=None):
    """has_answer for every retrieved passage of every question, over a process pool.

    answers[i] is question i's answer list, passage_texts[i] its retrieved passage texts in rank
    order. Returns hits[i][j]. Fork start: the workers need only this module, not the caller's
    (torch-heavy) __main__.
    """
    jobs = [(a, t, match_type) for a, t in zip(answers, passage_texts)]
    num_workers = num_workers or multiprocessing.cpu_count()
    if num_workers <= 1 or len(jobs) < 2:
        return [_check_question(job) for job in jobs]
    chunksize = max(1, len(jobs) // (num_workers * 8))
    with multiprocessing.get_context("fork").Pool(num_workers) as pool:
        return pool.map(_check_question, jobs, chunksize=chunksize)


def top_k_accuracy(hits, ks):
    """Fraction of questions with an answer-bearing passage among their first k, for each k."""
    if not hits:
        raise ValueError("top_k_accuracy needs at least one question")
    first_hit = [next((j for j, h in enumerate(row) if h), None) for row in hits]
    return {k: sum(f is not None and f < k for f in first_hit) / len(hits) for k in ks}
