"""`codelift serve` on a free loopback port, driven by the official `openai` client over real HTTP."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import urllib.error
import urllib.request
import openai
import pytest
import uvicorn

from codelift.evaluate.run import EvalConfig, evaluate_model
from codelift.generate import make_generator
from codelift.serve import ServeLimits, build_app

NAME = "tiny"
KEY = "sk-test"


def post(url: str, body, key: str | None = KEY) -> tuple[int, dict]:
    """A raw POST (bytes sent as they are, anything else as JSON): (status, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
    class Counted:  # the real generator, counting the batches the server hands it
        def __init__(self):
            self.batches = []

        def __getattr__(self, name):
            return getattr(generator, name)

        def generate(self, prompts, **settings):
            self.batches.append(len(prompts))
            return generator.generate(prompts, **settings)

    counted = Counted()
    server, thread, url = start_server(build_app(counted, NAME))
    try:
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0) as c, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: c.completions.create(model=NAME, prompt=f"def f{i}(x):", max_tokens=32,
                                                                   temperature=0, seed=i), range(16)))
    finally:
        server.should_exit = True
        thread.join(10)
    assert len(answers) == 16 and sum(counted.batches) == 16
    assert len(counted.batches) < 16  # keyed by seed, each request would have been its own batch


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
                  mode="chat", dtype="float32")
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
    from codelift.generate import Generator
    from codelift.prompts import SYSTEM_PROMPT, render_prompt
    from codelift.rag import build_index, load_index
    from codelift.rag.context import task_contexts
    from codelift.serve import RagSettings

    class Recording(Generator):
        """The real generator, keeping the prompts it was given."""

        def __init__(self):
            self.tokenizer, self.context_length, self.prompts = generator.tokenizer, generator.context_length, []

        def generate(self, prompts, **kw):
            self.prompts += prompts
            return generator.generate(prompts, **kw)

    build_index(load_tasks("mbpp", "prompt", data_dir=data_dir), tmp_path / "index", kind="flat", progress=False)
    retriever = load_index(tmp_path / "index")
    recording = Recording()
    server, thread, url = start_server(build_app(recording, NAME, rag=RagSettings(retriever, 2)))
    try:
        question = "Write a function to find the shared elements from the given two lists."
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0) as c:
            c.chat.completions.create(model=NAME, max_tokens=2, messages=[{"role": "system", "content": SYSTEM_PROMPT},
                                                                          {"role": "user", "content": question}])
    finally:
        server.should_exit = True
        thread.join(10)
    task = Task("request", question, "")
    [context] = task_contexts([task], "rag", 2, retriever, "chat")
    assert recording.prompts == [render_prompt(task, "chat", generator.tokenizer, context.text)]
    assert recording.prompts[0].count("<example ") == 2 and len(context.example_ids) == 2
