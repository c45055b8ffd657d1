"""utils/index.py's faiss index_factory indexes against brute-force numpy search: recall within the
bounds docs/indexes.md states, save/reload, refusal of a saved index built from other embeddings,
clear errors; and utils/embeddings.ShardRows (shards read as one matrix without a copy)."""

import json
import os

import numpy as np
import pytest

import utils.index
from utils.embeddings import ShardRows
from utils.errors import ConfigError, DataError
from utils.index import build_factory_index, open_index

META = {"model": "encoder-a", "dim": 32}


def clustered(n, dim, seed, centers=40):
    """Vectors around random centres: neighbourhoods like real embeddings have (uniform random data has
    none, and there every approximate index is at its worst)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    return (c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    emb = clustered(4000, 32, 0).astype(np.float16)  # doc2embedding's default dtype
    rng = np.random.default_rng(1)
    queries = (
        emb[rng.integers(0, 4000, 60)].astype(np.float32) + 0.3 * rng.standard_normal((60, 32))
    ).astype(np.float32)
    exact = queries.astype(np.float64) @ emb.astype(np.float64).T
    return emb, queries, exact, np.argsort(-exact, axis=1, kind="stable")


def recall(rows, truth, k):
    return np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows.tolist(), truth.tolist())])


# spec, nprobe, lowest recall@10 vs exact numpy, tolerance of the returned scores (None: PQ scores are
# approximate)
SPECS = [
    ("Flat", None, 1.0, 1e-3),
    ("SQfp16", None, 1.0, 1e-3),  # float16 storage of float16 embeddings loses nothing
    ("HNSW32", None, 0.95, 1e-3),  # float32 vectors: scores exact, the graph search may miss a few
    ("IVF16,Flat", 16, 1.0, 1e-3),  # every list probed: exact
    ("IVF16,Flat", 4, 0.9, 1e-3),
    ("IVF16,PQ16", 16, 0.7, None),  # 16 bytes for 32 dims: recall is the price of 8x smaller codes
    ("OPQ8,IVF16_HNSW8,PQ8", 16, 0.5, None),  # 8 bytes: 16x smaller
]


@pytest.mark.parametrize("spec, nprobe, min_recall, score_tol", SPECS)
def test_factory_index_agrees_with_brute_force(
    data, tmp_path, monkeypatch, spec, nprobe, min_recall, score_tol
):
    emb, queries, exact, truth = data
    monkeypatch.setattr(utils.index, "COPY_ROWS", 1500)  # several chunks, a ragged last one
    index, name = open_index(spec, emb, "cpu", str(tmp_path), META, nprobe=nprobe, ef_search=64)
    assert spec in name and index.ntotal == len(emb)
    scores, rows = index.search(queries, 10)
    assert recall(rows, truth, 10) >= min_recall
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if score_tol is not None:
        np.testing.assert_allclose(scores, np.take_along_axis(exact, rows, 1), atol=score_tol)
    if min_recall == 1.0:
        assert (rows[:, 0] == truth[:, 0]).all()


def test_training_sample_rule(data, monkeypatch):
    emb = data[0]
    monkeypatch.setattr(utils.index, "TRAIN_MIN", 100)
    assert build_factory_index(emb, "IVF8,Flat")[1]["train_rows"] == 64 * 8  # 64 per list
    assert build_factory_index(emb, "IVF1,Flat")[1]["train_rows"] == 100  # at least TRAIN_MIN
    monkeypatch.setattr(utils.index, "TRAIN_MAX", 300)
    assert build_factory_index(emb, "IVF8,Flat")[1]["train_rows"] == 300  # at most TRAIN_MAX
    assert build_factory_index(emb, "HNSW8")[1]["train_rows"] == 0  # nothing to train


def test_saved_index_reloads_with_identical_results(data, tmp_path, monkeypatch):
    emb, queries, _, _ = data
    path = str(tmp_path / "idx" / "ivfpq.faiss")
    index, name = open_index("IVF16,PQ16", emb, "cpu", str(tmp_path), META, path, nprobe=4)
    assert "saved to" in name and os.path.isfile(path) and not os.path.exists(path + ".tmp")
    with open(path + ".json") as f:
        sidecar = json.load(f)
    assert sidecar["spec"] == "IVF16,PQ16" and sidecar["num_passages"] == 4000 and sidecar["dim"] == 32
    assert (
        sidecar["model"] == "encoder-a"
        and sidecar["embedding_dir"] == str(tmp_path)
        and sidecar["train_rows"] == 4000
    )
    before = index.search(queries, 10)

    def no_build(*a, **k):
        raise AssertionError("rebuilt instead of loading")

    monkeypatch.setattr(utils.index, "build_factory_index", no_build)
    again, name = open_index("IVF16,PQ16", emb, "cpu", str(tmp_path), META, path, nprobe=4)
    assert f"loaded from {path}" in name
    after = again.search(queries, 10)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


@pytest.fixture
def saved(data, tmp_path):
    emb = data[0]
    path = str(tmp_path / "hnsw.faiss")
    open_index("HNSW8", emb, "cpu", str(tmp_path / "emb"), META, path)
    return emb, path, str(tmp_path / "emb")


@pytest.mark.parametrize(
    "change, named",
    [
        ("embedding_dir", "embedding_dir"),
        ("dim", "dim"),
        ("vectors", "vectors_sha1"),
        ("model", "model"),
        ("spec", "spec"),
    ],
)
def test_saved_index_refuses_other_embeddings(saved, tmp_path, change, named):
    emb, path, emb_dir = saved
    spec, meta = "HNSW8", dict(META)
    if change == "embedding_dir":
        emb_dir = str(tmp_path / "other")
    elif change == "dim":
        emb = emb[:, :16]
    elif change == "vectors":
        emb = emb.copy()
        emb[0] += 1
    elif change == "model":
        meta["model"] = "encoder-b"
    else:
        spec = "HNSW16"
    with pytest.raises(DataError) as err:
        open_index(spec, emb, "cpu", emb_dir, meta, path)
    message = str(err.value)
    assert path in message and named in message and "\n" not in message


def test_saved_index_without_sidecar_is_refused(saved):
    emb, path, emb_dir = saved
    os.remove(path + ".json")
    with pytest.raises(DataError, match="which says what the index was built from"):
        open_index("HNSW8", emb, "cpu", emb_dir, META, path)


@pytest.mark.parametrize(
    "spec", ["IVFxx,PQ8", "Hnsw32", "IVF16,PQ7"]
)  # unparsable; wrong case; 32 dims not divisible by 7
def test_bad_factory_string_is_one_config_error(data, tmp_path, spec):
    with pytest.raises(ConfigError) as err:
        open_index(spec, data[0], "cpu", str(tmp_path), META)
    message = str(err.value)
    assert spec in message and "\n" not in message and "index_factory.cpp" not in message


def test_more_lists_than_vectors_is_a_config_error(data, tmp_path):
    with pytest.raises(ConfigError, match="IVF8192"):
        open_index("IVF8192,Flat", data[0], "cpu", str(tmp_path), META)


def test_gpu_without_faiss_gpu_is_a_config_error(data, tmp_path):
    if utils.index.faiss_gpu_count():
        pytest.skip("this faiss has GPU support")
    with pytest.raises(ConfigError, match="faiss-gpu"):
        open_index("HNSW8", data[0], "gpu", str(tmp_path), META)


def test_shard_rows_reads_like_the_concatenation():
    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((n, 4)).astype(np.float16) for n in (5, 0, 7, 3)]
    whole, rows = np.concatenate(shards), ShardRows(shards)
    assert rows.shape == (15, 4) and len(rows) == 15 and rows.dtype == np.float16
    for a, b in [(0, 15), (3, 9), (5, 12), (12, 40), (14, 15), (6, 6)]:
        np.testing.assert_array_equal(rows[a:b], whole[a:b])
    pick = np.array([0, 4, 5, 6, 11, 12, 14])
    np.testing.assert_array_equal(rows[pick], whole[pick])


def test_unreadable_saved_index_is_one_data_error(saved):
    emb, path, emb_dir = saved
    with open(path, "wb") as f:
        f.write(b"not an index")
    with pytest.raises(DataError, match="not a readable faiss index"):
        open_index("HNSW8", emb, "cpu", emb_dir, META, path)


GIB = 1 << 30


@pytest.mark.parametrize(
    "n, d, free, device",
    [
        (1000, 768, [], "cpu"),  # no CUDA
        (1000, 768, [1_920_001], "gpu"),  # 1,536,000 float16 bytes < 0.8 x 1,920,001
        (1000, 768, [1_920_000], "cpu"),  # exactly 80%: no margin left
        (1000, 768, [960_001, 960_001], "gpu"),  # split: 768,000 bytes each < 0.8 x 960,001
        (1000, 768, [960_001, 900_000], "cpu"),  # the fullest GPU decides
        (21_015_324, 768, [22 * GIB], "cpu"),  # NQ (30.1 GiB in float16) after training on a 24 GB card
        (21_015_324, 768, [139 * GIB], "gpu"),  # NQ on an H200
        (21_015_324, 768, [20 * GIB] * 2, "gpu"),  # NQ split over two 24 GB cards: 15.0 GiB each < 16 GiB
    ],
)
def test_exact_search_placement(n, d, free, device):
    placed, why = utils.index.exact_search_device(n, d, free)
    assert placed == device
    assert (why is not None) == (device == "cpu" and bool(free))  # CPU for lack of GPU memory says so


def test_auto_puts_exact_search_where_free_memory_allows(data, monkeypatch, capsys):
    """open_index reads each GPU's free memory (faked here) and builds the exact index where it fits."""
    emb = data[0]  # 4000 x 32 float16: 256,000 bytes
    free = {0: 400_000, 1: 100_000}
    monkeypatch.setattr(utils.index.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(utils.index.torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(utils.index.torch.cuda, "mem_get_info", lambda g: (free[g], 80 * GIB))
    monkeypatch.setattr(
        utils.index, "build_index", lambda emb, device, dtype="float32": type("I", (), {"name": device})()
    )
    assert open_index("flat", emb, "auto", "emb", META)[1] == "cpu"  # 128,000 per GPU > 0.8 x 100,000
    out = capsys.readouterr().out
    assert "4,000 x 32 vectors take 0.0 GiB in float16" in out and "exact search on CPU" in out
    free[1] = 200_000
    assert open_index("flat", emb, "auto", "emb", META)[1] == "gpu"
    assert open_index("flat", emb, "cpu", "emb", META)[1] == "cpu"  # an explicit device is kept as asked
    monkeypatch.setattr(utils.index.torch.cuda, "is_available", lambda: False)
    assert open_index("flat", emb, "auto", "emb", META)[1] == "cpu"
    assert capsys.readouterr().out == ""  # no GPU at all: nothing to explain
