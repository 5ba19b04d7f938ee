"""Index backends: exact torch vs a brute-force loop, FAISS flat == exact, IVF / HNSW recall, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.retrieval.index import build_index, load_index, recall_against_exact


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2000, 32, generator=g), torch.randn(50, 32, generator=g)


def test_exact_matches_brute_force(data):
    vectors, queries = data
    scores, ids = build_index(vectors).search(queries, 5)
    v, q = F.normalize(vectors, dim=-1), F.normalize(queries, dim=-1)
    for row in range(len(q)):  # slow reference from the definition
        sims = [float(q[row] @ v[j]) for j in range(len(v))]
        best = sorted(range(len(v)), key=lambda j: -sims[j])[:5]
        assert ids[row].tolist() == best
        torch.testing.assert_close(scores[row], torch.tensor([sims[j] for j in best]), rtol=1e-5, atol=1e-5)


def test_flat_faiss_equals_exact(data):
    pytest.importorskip("faiss")
    vectors, queries = data
    exact_scores, exact_ids = build_index(vectors).search(queries, 10)
    flat_scores, flat_ids = build_index(vectors, "flat").search(queries, 10)
    assert torch.equal(flat_ids, exact_ids)
    torch.testing.assert_close(flat_scores, exact_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,options,floor", [
    ("ivf", {"nlist": 32, "nprobe": 8}, 0.6), ("hnsw", {"m": 16, "ef_search": 64}, 0.8)])
def test_approximate_recall(data, backend, options, floor, capsys):
    pytest.importorskip("faiss")
    vectors, queries = data
    exact = build_index(vectors)
    index = build_index(vectors, backend, **options)
    recall = recall_against_exact(index, exact, queries, 10)
    with capsys.disabled():
        print(f"\n{backend} {options} recall@10 vs exact on 2000x32 random: {recall:.3f}")
    assert floor <= recall <= 1.0
    if backend == "ivf":  # probing every cell makes IVF exact
        index.set_search_params(nprobe=32)
        assert recall_against_exact(index, exact, queries, 10) == 1.0


@pytest.mark.parametrize("backend", ["exact", "flat", "ivf", "hnsw"])
def test_save_load_roundtrip(tmp_path, data, backend):
    if backend != "exact":
        pytest.importorskip("faiss")
    vectors, queries = data
    index = build_index(vectors, backend, nlist=16, nprobe=4)
    index.save(tmp_path / backend)
    loaded = load_index(tmp_path / backend)
    assert (loaded.backend, loaded.ntotal, loaded.dim, loaded.params) == (backend, 2000, 32, index.params)
    a, b = index.search(queries, 7), loaded.search(queries, 7)
    assert torch.equal(a[1], b[1])


def test_bad_input(data):
    vectors, queries = data
    index = build_index(vectors[:3])
    assert index.search(queries, 10)[1].shape == (50, 3)  # k clamped to the index size
    with pytest.raises(ZscirError, match="dimension"):
        index.search(queries[:, :5], 2)
    with pytest.raises(ZscirError, match="backend"):
        build_index(vectors, "annoy")
    with pytest.raises(ZscirError, match="NaN"):
        build_index(torch.full((2, 3), float("nan")))
