"""Write data/sample/: an invented who's-who in DPR's file formats, for the CPU demo and the tests.

Every person, town, work and prize is made up from the word lists below with a fixed seed, so
`python data/make_sample.py` rewrites byte-identical files. Each person has two passages per
relation (birthplace, teacher, ...): a fact passage that answers it in other words than the
question ("where was X born" -> "X grew up in Y") and a trap passage that repeats the question's
words without the answer ("the house where X was born burned down"). Word overlap thus points at
the trap, which fools BM25 and an off-the-shelf sentence encoder; which passages hold answers is
consistent across people, which DPR training learns from questions about other people. The same
generator writes larger corpora of this kind (--people, --extra_people; the GPU check uses 200k
passages).

Files (data/sample/README.md): psgs.tsv (psgs_w100.tsv format), train.json and dev.json (biencoder
records: positive, random and BM25 hard negative passages), test.qa.csv (question<TAB>['answer']).
"""

import argparse
import csv
import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.files import atomic_write  # noqa: E402
from utils.qa import has_answer  # noqa: E402  (the check the retriever is scored with)

SEED = 2020
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
SPLITS = {"train": 48, "dev": 8, "test": 40}  # people per split; each person gives one question per relation
N_NEGATIVES, N_HARD_NEGATIVES = 2, 3

ROOTS = [
    "Vel",
    "Ost",
    "Mar",
    "Tal",
    "Kor",
    "Bren",
    "Ash",
    "Dun",
    "Hal",
    "Isk",
    "Lun",
    "Quen",
    "Sar",
    "Thal",
    "Ulm",
    "Var",
    "Zor",
    "Cal",
    "Eld",
    "Fen",
    "Gor",
    "Rav",
    "Nor",
    "Pel",
    "Tor",
    "Mir",
    "Ard",
    "Bel",
    "Dra",
    "Esk",
    "Kel",
    "Lor",
    "Mor",
    "Ner",
    "Ren",
    "Sel",
    "Tam",
    "Wen",
    "Cass",
    "Hesk",
    "Jor",
    "Nim",
    "Orv",
]
SURNAME_ENDS = [
    "by",
    "sen",
    "ard",
    "ell",
    "ow",
    "ick",
    "ane",
    "orth",
    "ley",
    "ant",
    "ov",
    "wyn",
    "ett",
    "ade",
    "ling",
    "mark",
    "ritz",
    "off",
    "holt",
    "sky",
]
TOWN_ENDS = [
    "rel",
    "ith",
    "dor",
    "wick",
    "holm",
    "burg",
    "aro",
    "esh",
    "ford",
    "ven",
    "stad",
    "gard",
    "ona",
    "enz",
    "hafen",
    "mouth",
    "bridge",
    "field",
]
FIRST = {
    "m": [
        "Aldric",
        "Tobin",
        "Corvin",
        "Halvard",
        "Oren",
        "Rufus",
        "Teodor",
        "Viggo",
        "Anselm",
        "Cato",
        "Emrys",
        "Gideon",
        "Ivo",
        "Kasimir",
        "Mattias",
        "Osric",
        "Lorcan",
        "Bastian",
        "Evander",
        "Jurek",
    ],
    "f": [
        "Marta",
        "Ines",
        "Sela",
        "Edda",
        "Liesl",
        "Petra",
        "Sabine",
        "Ulla",
        "Wenna",
        "Yara",
        "Brida",
        "Dagny",
        "Fenna",
        "Hesper",
        "Jorun",
        "Linnea",
        "Nerys",
        "Agnete",
        "Beatrix",
        "Clio",
    ],
}
PRONOUNS = {"m": {"he": "he", "his": "his", "him": "him"}, "f": {"he": "she", "his": "her", "him": "her"}}
TITLE_ADJ = [
    "Lantern",
    "Silent",
    "Winter",
    "Copper",
    "Hollow",
    "Glass",
    "Drowned",
    "Northern",
    "Burning",
    "Paper",
    "Quiet",
    "Crimson",
    "Distant",
    "Sleeping",
    "Iron",
    "Golden",
    "Broken",
    "Bitter",
    "Secret",
]
TITLE_NOUN = [
    "Orchard",
    "Harbour",
    "Garden",
    "Shore",
    "Ferry",
    "Mill",
    "Choir",
    "Lighthouse",
    "Market",
    "Forest",
    "Road",
    "Well",
    "Island",
    "Wedding",
    "Meadow",
    "Staircase",
    "Bell",
    "Regiment",
]
PRIZES = ["Medal", "Prize", "Cross", "Laurel", "Ribbon"]
# profession: (its works, what the trade is called)
PROFESSIONS = {
    "painter": ("painting", "painting"),
    "composer": ("opera", "composition"),
    "novelist": ("novel", "writing"),
    "architect": ("building", "architecture"),
    "sculptor": ("statue", "carving"),
    "poet": ("poem", "verse"),
}
JOBS = [
    "ferryman",
    "clockmaker",
    "tanner",
    "bookbinder",
    "blacksmith",
    "miller",
    "carpenter",
    "weaver",
    "baker",
    "stonemason",
    "tavern keeper",
    "printer",
    "cooper",
    "saddler",
    "locksmith",
    "glazier",
]
MONTHS = ["January", "March", "April", "June", "August", "October", "November", "December"]

# relation: (answer kind, question templates, fact templates with the answer, trap templates without it).
# A trap repeats the question's words; a fact says the same thing in other words.
RELATIONS = {
    "birthplace": (
        "town",
        ["where was {name} born", "what town was {name} born in", "where is the birthplace of {name}"],
        [
            "{Name} grew up in {ans}, where {his} father worked as a {job}.",
            "{Name} spent {his} childhood in the river port of {ans}, the child of a {job}.",
        ],
        [
            "{Name} was born in a hard winter, and no town has a good claim to be the birthplace.",
            "The house where {Name} was born burned down, and the town lost its birthplace museum.",
        ],
    ),
    "teacher": (
        "person",
        ["who taught {name}", "who was the teacher of {name}", "who trained {name} as a {prof}"],
        [
            "As an apprentice {Name} learned the craft of {trade} in the workshop of {ans}.",
            "{Name} owed {his} whole method to {ans}, in whose studio {he} spent six years.",
        ],
        [
            "As a teacher {Name} was strict, taught by example and trained each young {prof} like a soldier.",
            "{Name} taught at an academy and trained many, but said a {prof} makes a poor teacher.",
        ],
    ),
    "spouse": (
        "person",
        ["who was {name} married to", "who did {name} marry", "who was the spouse of {name}"],
        [
            "{Name} shared {his} life and house with {ans}, whom {he} had met as a student.",
            "{Name} and {ans} were wed in a village chapel and stayed together for forty years.",
        ],
        [
            "{Name} wrote that an artist should never marry, since a spouse and a studio do not mix, and "
            "that the married artist is lost.",
            "Friends tried to find {Name} a spouse, but {he} would not marry and joked that {he} was married "
            "to {his} work.",
        ],
    ),
    "death": (
        "year",
        ["when did {name} die", "in what year did {name} die", "what year did {name} pass away"],
        [
            "The last entry in {Name}'s diary is dated {ans}; {he} was buried a week later.",
            "{Name}'s heart gave out in {ans}, and the funeral filled the cathedral square.",
        ],
        [
            "{Name} was afraid to die in debt and to pass away forgotten, and saved money every year.",
            "Every year {Name} said {he} would die soon, and friends joked that {he} would never pass away.",
        ],
    ),
    "first_work": (
        "title",
        [
            "what was the first {work} by {name}",
            "what was {name}'s first {work}",
            "what {work} did {name} create first",
        ],
        [
            "{Name}'s career began with {ans}, which a dealer bought for the price of a coat.",
            "Nobody had heard of {Name} before {ans} appeared, and after it everybody had.",
        ],
        [
            "{Name} was the first {prof} of {his} town to create a {work} in the new style, and the first "
            "to be mocked for it.",
            "At first {Name} could not create a {work} quickly, and {Name}'s first years brought little "
            "money.",
        ],
    ),
    "prize": (
        "prize",
        ["what prize did {name} win", "what award did {name} receive", "which prize was given to {name}"],
        [
            "In old age {Name} was honoured with the {ans} for {his} life's work.",
            "The {ans} went to {Name} when the academy reopened after the war.",
        ],
        [
            "{Name} never expected to win a prize or receive an award, and said prizes were given to the "
            "dull.",
            "Critics said an award should be given to {Name}, who never did win a prize or receive any "
            "honour.",
        ],
    ),
}
FILLERS = [
    "{Name} kept a small garden and wrote long letters to friends abroad.",
    "Visitors remembered {Name} as shy in company and sharp in argument.",
    "{Name} travelled little, and said an artist needs a quiet room more than new sights.",
    "In {his} {month} notebooks {Name} listed debts, recipes and ideas for new work.",
    "A portrait of {Name} hangs in the public library, though it is said to flatter {him}.",
    "{Name} liked long walks along the canal and often worked late into the night.",
    "Several of {Name}'s letters were published after the war by a distant cousin.",
    "Younger artists copied {Name}'s habits, down to the black coat {he} always wore.",
]


def unique(rng, used, make):
    """A fresh value from `make`; after 20 clashes give up on uniqueness (only a large corpus gets there)."""
    for _ in range(20):
        value = make(rng)
        if value not in used:
            break
    used.add(value)
    return value


def make_value(kind, rng):
    if kind == "town":
        return rng.choice(ROOTS) + rng.choice(TOWN_ENDS)
    if kind == "year":
        return str(rng.randint(1620, 1940))
    if kind == "title":
        return f"The {rng.choice(TITLE_ADJ)} {rng.choice(TITLE_NOUN)}"
    surname = rng.choice(ROOTS) + rng.choice(SURNAME_ENDS)
    return (
        f"{rng.choice(FIRST[rng.choice('mf')])} {surname}"
        if kind == "person"
        else f"{surname} {rng.choice(PRIZES)}"
    )


def person_passages(rng, used):
    """One person: name and [(text, question or None, answer)], a fact and a trap passage per relation."""
    sex, prof = rng.choice("mf"), rng.choice(sorted(PROFESSIONS))
    name = unique(rng, used, lambda r: f"{r.choice(FIRST[sex])} {r.choice(ROOTS)}{r.choice(SURNAME_ENDS)}")
    slots = dict(
        PRONOUNS[sex],
        Name=name,
        name=name.lower(),
        prof=prof,
        work=PROFESSIONS[prof][0],
        trade=PROFESSIONS[prof][1],
        job=rng.choice(JOBS),
        month=rng.choice(MONTHS),
    )
    out = []
    for kind, questions, facts, traps in RELATIONS.values():
        answer = unique(rng, used, lambda r: make_value(kind, r))
        out.append(
            (rng.choice(facts).format(ans=answer, **slots), rng.choice(questions).format(**slots), answer)
        )
        out.append((rng.choice(traps).format(**slots), None, answer))
    rng.shuffle(out)  # facts and traps interleaved, as an article's passages would be
    for i, (sentence, question, answer) in enumerate(out):  # each with one sentence that holds nothing asked
        pair = [sentence, rng.choice(FILLERS).format(**slots)]
        rng.shuffle(pair)
        out[i] = (" ".join(x[0].upper() + x[1:] for x in pair), question, answer)
    return name, out


# ---------------------------------------------------------------------------------------------
# BM25 (k1=0.9, b=0.4 as DPR's baseline) for hard negatives, scored only over the passages that hold the
# question's rarest words (the person's names), at least 100 of them: the top passages always do, and
# 200k passages stay fast.

STOPWORDS = set(
    "a an and as at by did do does for from in is it of on the to was were what when where "
    "which who whom with".split()
)


def terms(text):
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


class BM25:
    def __init__(self, docs, k1=0.9, b=0.4):
        self.postings, self.norms = defaultdict(dict), []  # word -> {passage index: term frequency}
        for i, doc in enumerate(docs):
            words = terms(doc)
            self.norms.append(len(words))
            for w, tf in Counter(words).items():
                self.postings[w][i] = tf
        avg = sum(self.norms) / len(docs)
        self.norms = [k1 * (1 - b + b * n / avg) for n in self.norms]
        self.n, self.k1 = len(docs), k1

    def top(self, query):
        """Passage indices by falling score (ties by index)."""
        qterms = sorted(
            (w for w in set(terms(query)) if w in self.postings), key=lambda w: (len(self.postings[w]), w)
        )
        scores = {}
        for w in qterms:
            scores.update(dict.fromkeys(self.postings[w], 0.0))
            if len(scores) >= 100:
                break
        for w in qterms:
            docs = self.postings[w]
            idf = math.log(1 + (self.n - len(docs) + 0.5) / (len(docs) + 0.5))
            for i in scores:
                tf = docs.get(i, 0)
                scores[i] += idf * tf * (self.k1 + 1) / (tf + self.norms[i])
        return sorted(scores, key=lambda i: (-scores[i], i))


# ---------------------------------------------------------------------------------------------
# Assemble and write


def build(seed, splits, extra_people):
    """passages [(id, text, title)] and {split: [(question, answers, passage index)]}; splits never share a
    person; `extra_people` add passages only."""
    rng, used = random.Random(seed), set()
    passages, questions = [], {name: [] for name in [*splits, None]}
    owners = [name for name, people in [*splits.items(), (None, extra_people)] for _ in range(people)]
    rng.shuffle(owners)  # people of all splits interleaved in the file, their passages kept together
    for split in owners:
        title, items = person_passages(rng, used)
        for text, question, answer in items:
            assert (
                "\t" not in text and '"' not in text and (question is None or has_answer([answer], text))
            ), (answer, text)
            if question:
                questions[split].append((question, [answer], len(passages)))
            passages.append((len(passages) + 1, text, title))
    del questions[None]
    for split in questions:
        rng.shuffle(questions[split])
    return passages, questions


def biencoder_records(rng, passages, items, bm25):
    def ctx(i, score):
        pid, text, title = passages[i]
        return {
            "title": title,
            "text": text,
            "score": score,
            "title_score": int(score == 1000),
            "passage_id": str(pid),
        }

    records = []
    for question, answers, gold in items:
        ranked = (i for i in bm25.top(question) if i != gold and not has_answer(answers, passages[i][1]))
        hard = [i for i, _ in zip(ranked, range(N_HARD_NEGATIVES))]
        assert len(hard) == N_HARD_NEGATIVES, question
        negatives = []
        while len(negatives) < N_NEGATIVES:
            i = rng.randrange(len(passages))
            if i != gold and i not in hard + negatives and not has_answer(answers, passages[i][1]):
                negatives.append(i)
        records.append(
            {
                "dataset": "nanodpr_sample",
                "question": question,
                "answers": answers,
                "positive_ctxs": [ctx(gold, 1000)],
                "negative_ctxs": [ctx(i, 0) for i in negatives],
                "hard_negative_ctxs": [ctx(i, 0) for i in hard],
            }
        )
    return records


def generate(out_dir=OUT_DIR, seed=SEED, splits=None, extra_people=0):
    passages, questions = build(seed, splits or SPLITS, extra_people)
    rng, bm25 = random.Random(seed + 1), BM25([f"{title} {text}" for _, text, title in passages])
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(os.path.join(out_dir, "psgs.tsv")) as f:  # psgs_w100.tsv: text quoted, title bare
        f.write("id\ttext\ttitle\n")
        f.writelines(f'{pid}\t"{text}"\t{title}\n' for pid, text, title in passages)
    for split in ("train", "dev"):
        with atomic_write(os.path.join(out_dir, f"{split}.json")) as f:
            json.dump(
                biencoder_records(rng, passages, questions[split], bm25), f, indent=1, ensure_ascii=False
            )
            f.write("\n")
    with atomic_write(os.path.join(out_dir, "test.qa.csv")) as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(
            (q, str(a)) for q, a, _ in questions["test"]
        )
    return {"passages": len(passages), **{split: len(items) for split, items in questions.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=OUT_DIR)
    parser.add_argument(
        "--people",
        type=int,
        nargs=3,
        metavar=("TRAIN", "DEV", "TEST"),
        help=f"people per split (default {' '.join(map(str, SPLITS.values()))}); "
        f"{2 * len(RELATIONS)} passages and {len(RELATIONS)} questions each",
    )
    parser.add_argument(
        "--extra_people", type=int, default=0, help="people who add passages but no questions"
    )
    args = parser.parse_args()
    counts = generate(
        args.output_dir,
        splits=dict(zip(SPLITS, args.people)) if args.people else None,
        extra_people=args.extra_people,
    )
    print(
        f"wrote {counts['passages']} passages, {counts['train']} train, {counts['dev']} dev and "
        f"{counts['test']} test questions to {args.output_dir}"
    )


if __name__ == "__main__":
    main()
