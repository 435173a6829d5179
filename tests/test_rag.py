"""Retrieval: real MiniLM embedder and real FAISS on a handful of MBPP tasks (seconds)."""

import dataclasses
import json
import shutil

import faiss
import pytest

from codelift.data import Task, load_tasks
from codelift.errors import CodeliftError
from codelift.rag import (
    DEFAULT_EMBEDDER,
    FAISS_HNSW_DEFAULTS,
    build_index,
    document_text,
    icl_examples,
    is_same_problem,
    load_index,
)
from codelift.rag import index as rag_index


@pytest.fixture
def kb(data_dir):
    return load_tasks("mbpp", "train", data_dir=data_dir)[:12]


@pytest.fixture
def index_dir(kb, tmp_path_factory):
    out = tmp_path_factory.mktemp("rag") / "index"
    build_index(kb, out, progress=False)
    return out


def test_round_trip_and_manifest(kb, index_dir):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["embedder"]["name"] == DEFAULT_EMBEDDER
    assert manifest["embedder"]["dimension"] == 384
    assert manifest["index"] == {"kind": "hnsw", "metric": "inner_product", "params": FAISS_HNSW_DEFAULTS,
                                 "faiss": faiss.__version__}
    assert (manifest["document"], manifest["count"]) == ("full", len(kb))
    assert len(manifest["data_sha256"]) == 64

    retriever = load_index(index_dir)
    assert [t.to_dict() for t in retriever.tasks] == [t.to_dict() for t in kb]
    result = retriever.search([kb[3].instruction, "reverse a string"], k=3)
    assert [len(h) for h in result.hits] == [3, 3]
    assert result.hits[0][0].task.task_id == kb[3].task_id
    assert all(-1.0 <= hit.score <= 1.0001 for hits in result.hits for hit in hits)
    assert result.dropped == [0, 0]
    assert result.embed_seconds > 0 and result.search_seconds > 0


def test_recorded_hnsw_defaults_are_faiss_own():
    hnsw = faiss.HNSW()
    assert FAISS_HNSW_DEFAULTS == {"M": hnsw.nb_neighbors(1), "efConstruction": hnsw.efConstruction,
                                   "efSearch": hnsw.efSearch}


@pytest.mark.parametrize("kind, params", [("flat", {}), ("hnsw", {"hnsw_m": 8, "ef_search": 32}),
                                          ("ivf", {"nlist": 2, "nprobe": 1})])
@pytest.mark.parametrize("document", ["full", "instruction"])
def test_every_kind_finds_the_document_it_is_queried_with(kb, tmp_path, kind, params, document):
    build_index(kb, tmp_path / "index", kind=kind, document=document, progress=False, **params)
    retriever = load_index(tmp_path / "index")
    result = retriever.search([document_text(task, document) for task in kb], k=1)
    assert [hits[0].task.task_id for hits in result.hits] == [task.task_id for task in kb]
    assert all(hits[0].score > 0.99 for hits in result.hits)


def test_self_retrieval_is_excluded_and_counted(kb, tmp_path):
    copy = dataclasses.replace(kb[0], task_id="elsewhere/1", instruction=kb[0].instruction.upper() + " ")
    build_index([*kb, copy], tmp_path / "index", kind="flat", document="instruction", progress=False)
    retriever = load_index(tmp_path / "index")
    queries = [task.instruction for task in kb[:4]]
    result = retriever.search(queries, k=3, exclude=[kb[0], kb[1], None, kb[3]])
    assert [len(h) for h in result.hits] == [3, 3, 3, 3]
    # kb[0] is indexed twice (the copy differs only in case and spacing): both go, yet 3 hits remain.
    assert result.dropped == [2, 1, 0, 1]
    assert not {h.task.task_id for h in result.hits[0]} & {kb[0].task_id, copy.task_id}
    assert result.hits[2][0].task.task_id == kb[2].task_id  # no exclusion asked: itself comes first


def test_same_problem_rule():
    a = Task("a/1", "Write a function to add two numbers.", "def add(a, b):\n    return a + b\n")
    assert is_same_problem(a, dataclasses.replace(a, instruction=a.instruction))
    assert is_same_problem(a, Task("b/7", "write a function to ADD two numbers", "x = 1"))
    assert is_same_problem(a, Task("b/8", "Sum two values.", "def add(a, b):  return a + b"))
    assert not is_same_problem(a, Task("b/9", "Write a function to add three numbers.", "def add3(): ..."))


def test_embedder_mismatch_is_refused(index_dir):
    with pytest.raises(CodeliftError, match="built with embedder 'sentence-transformers/all-MiniLM-L6-v2', not"):
        load_index(index_dir, embedder="someone/other-embedder")
    assert load_index(index_dir, embedder=DEFAULT_EMBEDDER).manifest["count"] == 12


def test_inconsistent_index_directory_is_refused(index_dir, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    wrong_dimension = {**manifest, "embedder": {**manifest["embedder"], "dimension": 768}}
    (copy / "manifest.json").write_text(json.dumps(wrong_dimension))
    with pytest.raises(CodeliftError, match="dimension 384; manifest.json expects 12 of dimension 768"):
        load_index(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    vectors = bytearray((copy / "index.faiss").read_bytes())
    vectors[-5] ^= 0x01  # one flipped bit of one stored vector
    (copy / "index.faiss").write_bytes(bytes(vectors))
    with pytest.raises(CodeliftError, match=r"index.faiss: contents differ from the index_sha256 in manifest.json "
                                            r"\(changed or damaged\); rebuild the index"):
        load_index(copy)
    shutil.copy(index_dir / "index.faiss", copy / "index.faiss")
    with (copy / "documents.jsonl").open("a") as f:
        f.write("\n")
    with pytest.raises(CodeliftError, match="differ from the data_sha256"):
        load_index(copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(CodeliftError, match="missing index.faiss"):
        load_index(copy)
    with pytest.raises(CodeliftError, match="not an index directory"):
        load_index(tmp_path)


def test_search_validates_k_and_exclude(index_dir):
    retriever = load_index(index_dir)
    for k in (0, 17, 2.5):
        with pytest.raises(CodeliftError, match="k must be"):
            retriever.search(["x"], k=k)
    with pytest.raises(CodeliftError, match="exclude has 1 entries for 2 queries"):
        retriever.search(["x", "y"], exclude=[None])


def test_build_validates_its_inputs(kb, tmp_path):
    with pytest.raises(CodeliftError, match="unknown index kind"):
        build_index(kb, tmp_path / "i", kind="annoy")
    with pytest.raises(CodeliftError, match="nlist does not apply to a hnsw index"):
        build_index(kb, tmp_path / "i", nlist=4)
    with pytest.raises(CodeliftError, match="duplicate task_id"):
        build_index([kb[0], kb[0]], tmp_path / "i")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CodeliftError, match="not an index directory"):
        build_index(kb, tmp_path / "mine")


def test_failed_build_leaves_no_partial_directory(kb, index_dir, tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(rag_index.faiss, "write_index", disk_full)
    with pytest.raises(OSError):
        build_index(kb, tmp_path / "index", progress=False)
    assert list(tmp_path.iterdir()) == []

    # A failed rebuild keeps the previous index whole.
    before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
    with pytest.raises(OSError):
        build_index(kb[:5], index_dir, progress=False)
    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before
    assert not [p for p in index_dir.parent.iterdir() if p.name.startswith(".")]


def test_icl_examples_are_seeded_and_never_the_task(kb):
    task = kb[0]
    copy = dataclasses.replace(task, task_id="elsewhere/1")
    examples = icl_examples([*kb, copy], 5, exclude=task)
    assert len({t.task_id for t in examples}) == 5
    assert not {t.task_id for t in examples} & {task.task_id, copy.task_id}
    assert examples == icl_examples([*kb, copy], 5, exclude=task)
    assert examples != icl_examples([*kb, copy], 5, seed=7, exclude=task)
    with pytest.raises(CodeliftError, match="n must be an integer from 0 to 11"):
        icl_examples([*kb, copy], 12, exclude=task)
