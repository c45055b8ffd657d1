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
    queries = (emb[rng.integers(0, 4000, 60)].astype(np.float32) + 0.3 * rng.standard_normal((60, 32))).astype(np.float32)
    exact = queries.astype(np.float64) @ emb.astype(np.float64).T
    return emb, queries, exact, np.argsort(-exact, axis=1, kind="stable")


def recall(rows, truth, k):
    return np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows.tolist(), truth.tolist())])


# spec, nprobe, lowest recall@10 vs exact numpy, tolerance of the returned scores (None: PQ scores are approximate)
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
def test_factory_index_agrees_with_brute_force(data, tmp_path, monkeypatch, spec, nprobe, min_recall, score_tol):
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
    assert sidecar["model"] == "encoder-a" and sidecar["embedding_dir"] == str(tmp_path) and sidecar["train_rows"] == 4000
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


@pytest.mark.parametrize("change, named", [
    ("embedding_dir", "embedding_dir"),
    ("dim", "dim"),
    ("vectors", "vectors_sha1"),
    ("model", "model"),
    ("spec", "spec"),
])
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


@pytest.mark.parametrize("spec", ["IVFxx,PQ8", "Hnsw32", "IVF16,PQ7"])  # unparsable; wrong case; 32 dims not divisible by 7
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
