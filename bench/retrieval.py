"""Retrieval benchmark: exact (Flat) against HNSW search, on the MBPP knowledge base and at scale.

Datasets: the MBPP knowledge base (train + prompt, "full" documents, embedded with the packaged
MiniLM; queries are MBPP validation and HumanEval problem texts), and N random 384-d unit
vectors (numpy, seeded) with as many fresh random queries. `--intrinsic-dim m` draws the random
vectors from a random m-dimensional subspace instead of the whole sphere: text embeddings
concentrate near low-dimensional structure, while i.i.d. uniform vectors are HNSW's worst case.

Per index: build time; p50/p99 latency of single-query k=3 searches with one FAISS thread (the
serving case, and fair to Flat, which would otherwise parallelise a lone query differently);
recall@3 against Flat; and the p50 speed-up over Flat. HNSW is built once per random dataset
and searched at each --ef-search (a search-time knob); the MBPP graph at FAISS's default.

    python bench/retrieval.py --n-random 1000000
    python bench/retrieval.py --n-random 1000000 --intrinsic-dim 16 --skip-mbpp
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss
import numpy as np

from codelift.data import load_tasks
from codelift.rag.index import (FAISS_HNSW_DEFAULTS, document_text, embed, index_params, load_embedder,
                                 make_index, set_search_params)

K = 3


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator, basis: np.ndarray | None = None,
                        chunk: int = 100_000) -> np.ndarray:
    """n unit rows, drawn in chunks so no float64 or second full-size copy is ever made; with a
    `basis` (dim x m) the rows are random combinations of its columns (an m-dim subspace)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        block = rng.standard_normal((size, dim if basis is None else basis.shape[1]), dtype=np.float32)
        if basis is not None:
            block = block @ basis.T
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + size] = block
    return out


def latencies_ms(index: faiss.Index, queries: np.ndarray) -> np.ndarray:
    """Wall time of each single-query search, one FAISS thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for row in range(len(queries)):
            start = time.perf_counter()
            index.search(queries[row:row + 1], K)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.array(times) * 1e3


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that the approximate search returned."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def compare(name: str, vectors: np.ndarray, queries: np.ndarray, hnsw: dict, ef_searches: list[int],
            flat_latency_queries: int) -> list[dict]:
    """Rows for Flat and for one HNSW graph searched at each efSearch, on one dataset."""
    flat, flat_build = timed(make_index, vectors, "flat", {})
    _, truth = flat.search(queries, K)
    flat_ms = latencies_ms(flat, queries[:flat_latency_queries])
    del flat
    rows = [{"dataset": name, "index": "Flat", "build_s": flat_build, "ms": flat_ms, "recall": 1.0,
             "speedup": 1.0}]
    graph, hnsw_build = timed(make_index, vectors, "hnsw", hnsw)
    for ef in ef_searches:
        params = {**hnsw, "efSearch": ef}
        set_search_params(graph, "hnsw", params)
        _, found = graph.search(queries, K)
        ms = latencies_ms(graph, queries)
        rows.append({"dataset": name, "index": f"HNSW M={params['M']} efC={params['efConstruction']} "
                     f"efS={ef}", "build_s": hnsw_build, "ms": ms, "recall": recall(found, truth),
                     "speedup": float(np.median(flat_ms) / np.median(ms))})
    return rows


def mbpp_rows(args) -> list[dict]:
    """The real knowledge base: "full" documents against real problem texts as queries."""
    kb = [t for split in ("train", "prompt") for t in load_tasks("mbpp", split, data_dir=args.data_dir)]
    questions = load_tasks("mbpp", "validation", data_dir=args.data_dir) + load_tasks("humaneval")
    model = load_embedder()
    docs, embed_s = timed(embed, model, [document_text(t) for t in kb])
    queries = embed(model, [t.instruction for t in questions], query=True)
    print(f"MBPP: {len(kb)} documents embedded in {embed_s:.1f}s; {len(questions)} queries")
    hnsw = index_params("hnsw", len(kb), hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    # A few hundred documents: FAISS's default efSearch already covers the graph.
    return compare(f"MBPP KB ({len(kb)})", docs, queries, hnsw, [hnsw["efSearch"]], len(queries))


def random_rows(args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    basis = rng.standard_normal((args.dim, args.intrinsic_dim), dtype=np.float32) if args.intrinsic_dim else None
    (vectors, queries), gen_s = timed(lambda: (random_unit_vectors(args.n_random, args.dim, rng, basis),
                                               random_unit_vectors(args.queries, args.dim, rng, basis)))
    shape = f"{args.intrinsic_dim}-dim subspace" if args.intrinsic_dim else "uniform"
    print(f"random: {args.n_random:,} x {args.dim} unit vectors ({shape}) and {args.queries} queries "
          f"drawn in {gen_s:.1f}s")
    hnsw = index_params("hnsw", args.n_random, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    return compare(f"random {shape} ({args.n_random:,})", vectors, queries, hnsw, args.ef_search,
                   args.flat_latency_queries)


def print_table(rows: list[dict]) -> None:
    header = ("dataset", "index", "build s", "p50 ms", "p99 ms", "recall@3", "p50 speed-up")
    lines = [(r["dataset"], r["index"], f"{r['build_s']:.1f}", f"{np.percentile(r['ms'], 50):.3f}",
              f"{np.percentile(r['ms'], 99):.3f}", f"{r['recall']:.4f}", f"{r['speedup']:.1f}x")
             for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(line, widths)) + " |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-random", type=int, default=1_000_000, help="random vectors to index (0: skip)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--intrinsic-dim", type=int, default=0, help="draw from an m-dim subspace (0: uniform)")
    parser.add_argument("--queries", type=int, default=1000, help="random queries for recall and HNSW latency")
    parser.add_argument("--flat-latency-queries", type=int, default=100,
                        help="single queries timed on Flat (each scans all vectors)")
    parser.add_argument("--hnsw-m", type=int, default=FAISS_HNSW_DEFAULTS["M"])
    parser.add_argument("--ef-construction", type=int, default=FAISS_HNSW_DEFAULTS["efConstruction"])
    parser.add_argument("--ef-search", type=lambda s: [int(v) for v in s.split(",")],
                        default=[FAISS_HNSW_DEFAULTS["efSearch"], 64, 256, 1024],
                        help="comma-separated efSearch values to search the one HNSW graph with")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default=os.environ.get("CODELIFT_DATA"))
    parser.add_argument("--skip-mbpp", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"faiss {faiss.__version__}, {os.cpu_count()} CPUs; builds use {faiss.omp_get_max_threads()} "
          "threads, latencies 1 thread, k=3")
    rows = ([] if args.skip_mbpp else mbpp_rows(args)) + (random_rows(args) if args.n_random else [])
    print_table(rows)


if __name__ == "__main__":
    main()
