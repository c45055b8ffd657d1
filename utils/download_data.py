"""\
Download DPR's data and checkpoints: `python utils/download_data.py --resource NAME [--output_dir downloads]`
(or `python -m utils.download_data ...`).

Resource `a.b.c` lands at `<output_dir>/a/b/c<ext>`, the layout DPR uses, so default paths work after a
download. A name that is no resource selects every resource starting with it, as in DPR
(`--resource data.retriever.qas.nq` gets nq-train/dev/test). `--list` shows them all.

Only the stdlib (urllib) and tqdm: DPR's downloader needs `wget`, reads a whole .gz into memory to unpack
it (psgs_w100 is 13 GB), and cannot resume. Here bytes stream to `<file>.part`; a rerun (or an automatic
retry) continues with an HTTP Range request; the size is checked against Content-Length; a .gz is unpacked
as a stream into its own `.part` (gzip's CRC and length trailer catch corrupt data); a file gets its final
name only when complete, so an existing final file is complete and skipped. DPR publishes no checksums.
"""

import argparse
import gzip
import http.client
import os
import shutil
import sys
import time
import zlib
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tqdm import tqdm

DPR = "https://dl.fbaipublicfiles.com/dpr"
RETRIEVER = f"{DPR}/data/retriever"
# NQ's license travels with every NQ-derived file; DPR saves it as LICENSE and README beside the data.
NQ_LICENSE = {"LICENSE": f"{DPR}/nq_license/LICENSE", "README": f"{DPR}/nq_license/README"}


def _res(url, ext, desc, license_files=None):
    return {"url": url, "ext": ext, "desc": desc, "license_files": license_files or {}}


# DPR's resource names and URLs (dpr/data/download_data.py), retriever part only; the reader's are left out.
RESOURCES = {
    "data.wikipedia_split.psgs_w100": _res(
        f"{DPR}/wikipedia_split/psgs_w100.tsv.gz",
        ".tsv",
        "21M 100-word passages of the 2018-12-20 English Wikipedia (id, text, title), the retrieval corpus",
    ),
    "data.retriever.nq-train": _res(
        f"{RETRIEVER}/biencoder-nq-train.json.gz",
        ".json",
        "NQ train questions with positive, negative and BM25 hard-negative passages",
        NQ_LICENSE,
    ),
    "data.retriever.nq-dev": _res(
        f"{RETRIEVER}/biencoder-nq-dev.json.gz",
        ".json",
        "NQ dev questions with positive, negative and BM25 hard-negative passages",
        NQ_LICENSE,
    ),
    "data.retriever.nq-adv-hn-train": _res(
        f"{RETRIEVER}/biencoder-nq-adv-hn-train.json.gz",
        ".json",
        "NQ train with hard negatives mined by DPR's own NQ model (trains the single-adv-hn checkpoint)",
        NQ_LICENSE,
    ),
    "data.retriever.trivia-train": _res(
        f"{RETRIEVER}/biencoder-trivia-train.json.gz", ".json", "TriviaQA train questions with passages"
    ),
    "data.retriever.trivia-dev": _res(
        f"{RETRIEVER}/biencoder-trivia-dev.json.gz", ".json", "TriviaQA dev questions with passages"
    ),
    "data.retriever.squad1-train": _res(
        f"{RETRIEVER}/biencoder-squad1-train.json.gz", ".json", "SQuAD 1.1 train questions with passages"
    ),
    "data.retriever.squad1-dev": _res(
        f"{RETRIEVER}/biencoder-squad1-dev.json.gz", ".json", "SQuAD 1.1 dev questions with passages"
    ),
    "data.retriever.webq-train": _res(
        f"{RETRIEVER}/biencoder-webquestions-train.json.gz",
        ".json",
        "WebQuestions train questions with passages",
    ),
    "data.retriever.webq-dev": _res(
        f"{RETRIEVER}/biencoder-webquestions-dev.json.gz", ".json", "WebQuestions dev questions with passages"
    ),
    "data.retriever.curatedtrec-train": _res(
        f"{RETRIEVER}/biencoder-curatedtrec-train.json.gz",
        ".json",
        "CuratedTREC train questions with passages",
    ),
    "data.retriever.curatedtrec-dev": _res(
        f"{RETRIEVER}/biencoder-curatedtrec-dev.json.gz", ".json", "CuratedTREC dev questions with passages"
    ),
    "data.retriever.qas.nq-train": _res(
        f"{RETRIEVER}/nq-train.qa.csv", ".csv", "NQ train questions and answers (qas CSV)", NQ_LICENSE
    ),
    "data.retriever.qas.nq-dev": _res(
        f"{RETRIEVER}/nq-dev.qa.csv", ".csv", "NQ dev questions and answers (qas CSV)", NQ_LICENSE
    ),
    "data.retriever.qas.nq-test": _res(
        f"{RETRIEVER}/nq-test.qa.csv",
        ".csv",
        "NQ test questions and answers (qas CSV), the paper's NQ numbers",
        NQ_LICENSE,
    ),
    "data.retriever.qas.trivia-train": _res(
        f"{RETRIEVER}/trivia-train.qa.csv.gz", ".csv", "TriviaQA train questions and answers"
    ),
    "data.retriever.qas.trivia-dev": _res(
        f"{RETRIEVER}/trivia-dev.qa.csv.gz", ".csv", "TriviaQA dev questions and answers"
    ),
    "data.retriever.qas.trivia-test": _res(
        f"{RETRIEVER}/trivia-test.qa.csv.gz", ".csv", "TriviaQA test questions and answers"
    ),
    "data.retriever.qas.squad1-test": _res(
        f"{RETRIEVER}/squad1-test.qa.csv", ".csv", "SQuAD 1.1 test questions and answers"
    ),
    "data.retriever.qas.webq-test": _res(
        f"{RETRIEVER}/webquestions-test.qa.csv", ".csv", "WebQuestions test questions and answers"
    ),
    "data.retriever.qas.curatedtrec-test": _res(
        f"{RETRIEVER}/curatedtrec-test.qa.csv",
        ".csv",
        "CuratedTREC test questions and answers (regex answers)",
    ),
    "checkpoint.retriever.single.nq.bert-base-encoder": _res(
        f"{DPR}/checkpoint/retriever/single/nq/hf_bert_base.cp",
        ".cp",
        "DPR bi-encoder (two bert-base-uncased) trained on NQ",
    ),
    # sic: DPR's bucket spells this path `retriver`
    "checkpoint.retriever.single-adv-hn.nq.bert-base-encoder": _res(
        f"{DPR}/checkpoint/retriver/single-adv-hn/nq/hf_bert_base.cp",
        ".cp",
        "DPR bi-encoder trained on NQ plus model-mined hard negatives (data.retriever.nq-adv-hn-train)",
    ),
    "checkpoint.retriever.multiset.bert-base-encoder": _res(
        f"{DPR}/checkpoint/retriver/multiset/hf_bert_base.cp",
        ".cp",
        "DPR bi-encoder trained on NQ + TriviaQA + WebQuestions + CuratedTREC",
    ),
}

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or unpack failed; the message names the URL and the file."""


def select(name, resources=RESOURCES):
    """The resource keys `name` means: itself if it is one, else every key it prefixes (as DPR)."""
    if name in resources:
        return [name]
    keys = [k for k in resources if k.startswith(name)]
    if not keys:
        raise DownloadError(f"unknown resource {name!r}: no resource is named or starts with it (see --list)")
    return keys


def target_path(key, resource, output_dir):
    """Resource `a.b.c` -> `<output_dir>/a/b/c<ext>`."""
    *dirs, name = key.split(".")
    return os.path.join(output_dir, *dirs, name + resource["ext"])


def _fetch_once(url, part):
    """Append the rest of `url` to `part`, asking for a Range from its current size."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urlopen(req, timeout=60)
    except HTTPError as e:
        if e.code == 416 and have:  # our .part is not a proper prefix of the remote file: start over
            print(f"{part}: server refused the range from byte {have}; restarting from 0", file=sys.stderr)
            os.remove(part)
            return _fetch_once(url, part)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    with resp:
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")  # "bytes START-END/SIZE"
            if not content_range.startswith(f"bytes {have}-"):
                raise DownloadError(f"{url}: asked for bytes from {have}, server sent {content_range!r}")
        elif have:
            print(f"{part}: server ignored the Range request; restarting from 0", file=sys.stderr)
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(part),
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:  # an OSError: resumable, like a dropped connection
        raise OSError(f"truncated: {size} of {total} bytes")


def fetch(url, path, retries=3):
    """Download `url` to `path` via `path.part`, resuming after an interruption (up to `retries` times now,
    and on the next run); `path` appears only when complete."""
    part = path + ".part"
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part)
            break
        except (OSError, http.client.HTTPException) as e:  # dropped connection, timeout, short body
            if attempt == retries:
                raise DownloadError(f"{url}: {e}; partial file {part} kept, rerun to resume") from None
            print(f"{url}: {e}; resuming (retry {attempt + 1} of {retries})", file=sys.stderr)
            time.sleep(min(2**attempt, 30))
    os.replace(part, path)


def gunzip(src, dst, url):
    """Stream-decompress `src` (downloaded from `url`) into `dst.part`, rename to `dst`, delete `src`. A
    corrupt `src` is deleted too: it had its full Content-Length, so only a fresh download can fix it."""
    part = dst + ".part"
    try:
        with (
            open(src, "rb") as raw,
            tqdm.wrapattr(
                raw,
                "read",
                total=os.path.getsize(src),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"unpack {os.path.basename(src)}",
                leave=False,
            ) as counted,
            gzip.GzipFile(fileobj=counted) as z,
            open(part, "wb") as out,
        ):
            shutil.copyfileobj(z, out, CHUNK)
        os.replace(part, dst)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        os.remove(src)
        raise DownloadError(
            f"{url}: {src}: corrupt gzip ({e}); deleted it, rerun to download again"
        ) from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    os.remove(src)


def download(name, output_dir="downloads", resources=RESOURCES, retries=3):
    """Download every resource `name` selects (and its license files) unless already there; returns their
    paths."""
    paths = []
    for key in select(name, resources):
        path, url = target_path(key, resources[key], output_dir), resources[key]["url"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            print(f"{key}: {path} exists, skipping", file=sys.stderr)
        else:
            print(f"{key}: {url} -> {path}", file=sys.stderr)
            if url.endswith(".gz"):
                if not os.path.exists(path + ".gz"):
                    fetch(url, path + ".gz", retries)
                gunzip(path + ".gz", path, url)
            else:
                fetch(url, path, retries)
            print(f"{key}: saved {path} ({os.path.getsize(path):,} bytes)", file=sys.stderr)
        for file_name, license_url in resources[key].get("license_files", {}).items():
            license_path = os.path.join(os.path.dirname(path), file_name)
            if not os.path.exists(license_path):
                fetch(license_url, license_path, retries)
        paths.append(path)
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--resource", help="resource name or prefix (see --list)")
    parser.add_argument(
        "--output_dir", default="downloads", help="resource a.b.c lands at OUTPUT_DIR/a/b/c.EXT"
    )
    parser.add_argument("--list", action="store_true", help="print the resources and exit")
    args = parser.parse_args(argv)
    if not args.list and not args.resource:
        parser.error("give --resource NAME (or --list to see the names)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for key, resource in RESOURCES.items():
            print(f"{key}\n    {resource['desc']}\n    -> {target_path(key, resource, args.output_dir)}")
        return
    try:
        paths = download(args.resource, args.output_dir)
    except DownloadError as e:
        sys.exit(f"error: {e}")
    print(f"done: {len(paths)} resource(s) under {args.output_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
