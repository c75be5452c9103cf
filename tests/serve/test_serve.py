"""The OpenAI-compatible server, driven by the official openai client over loopback (real default model)."""

import json
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.real_model

uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from helpers import running  # noqa: E402


@pytest.fixture(scope="module")
def server():
    import opengemma
    from opengemma.serve.app import create_app

    served = opengemma.load("gemma-3-270m")
    app = create_app(served, model_name="gemma-3-270m", max_batch=4, max_queue=8, max_len=512)
    llm = opengemma.load("gemma-3-270m")  # the reference: its own model (the engine thread owns the served one)
    with running(app) as base:
        yield base, llm, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused")


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["gemma-3-270m"]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


def test_completion_matches_the_library_and_counts_usage(server, client):
    _, llm, _ = server
    r = client.completions.create(model="gemma-3-270m", prompt="The capital of France is", max_tokens=12, temperature=0)
    expect = llm.generate("The capital of France is", max_new_tokens=12)
    assert r.choices[0].text == expect
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 12 and r.usage.total_tokens == 18


def test_streaming_completion_and_stop_strings(server, client):
    _, llm, _ = server
    full = llm.generate("def fibonacci(n):", max_new_tokens=24)
    stop = full.strip().split("\n")[1][:6]
    chunks = list(
        client.completions.create(
            model="gemma-3-270m", prompt="def fibonacci(n):", max_tokens=24, temperature=0, stream=True, stop=[stop]
        )
    )
    text = "".join(c.choices[0].text for c in chunks)
    assert text == llm.generate("def fibonacci(n):", max_new_tokens=24, stop=[stop])
    assert chunks[-1].choices[0].finish_reason == "stop" and stop not in text


def test_chat_streaming_and_not(server, client):
    _, llm, _ = server
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}]
    r = client.chat.completions.create(model="gemma-3-270m", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == llm.chat(messages, max_new_tokens=10)
    stream = client.chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == r.choices[0].message.content


def test_concurrent_streams_equal_alone(server, client):
    _, llm, _ = server
    prompts = [f"Item {i}: the best thing about the number {i} is" for i in range(12)]
    alone = {p: llm.generate(p, max_new_tokens=8) for p in prompts}
    got = {}

    def run(p):
        s = client.completions.create(model="gemma-3-270m", prompt=p, max_tokens=8, temperature=0, stream=True)
        got[p] = "".join(c.choices[0].text for c in s)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == alone


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"model": "gemma-3-270m", "prompt": 5}).encode(), 400, "'prompt' must be a string"),
        (json.dumps({"model": "gemma-3-270m", "prompt": "hi", "max_tokens": "ten"}).encode(), 400, "'max_tokens'"),
        (json.dumps({"model": "gemma-3-270m", "prompt": "hi", "temperature": True}).encode(), 400, "'temperature'"),
        (json.dumps({"model": "no-such-model", "prompt": "hi"}).encode(), 404, "does not exist"),
        (
            json.dumps({"model": "gemma-3-270m", "prompt": "hi", "max_tokens": 600}).encode(),
            400,
            "maximum context length is 512 tokens; the request has 2 prompt tokens and asks for 600",
        ),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, needle):
    base = server[0]
    r = httpx.post(base + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and {"message", "type", "param", "code"} <= set(err)
    assert httpx.get(base + "/health").status_code == 200  # still serving


def test_disconnect_frees_the_row(server, client):
    base, _, app = server
    sched = app.state.scheduler
    with httpx.stream(
        "POST",
        base + "/v1/completions",
        json={
            "model": "gemma-3-270m",
            "prompt": "Once upon a time",
            "max_tokens": 400,
            "stream": True,
            "temperature": 0,
        },
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # got the first token; now hang up
    for _ in range(100):
        if sched.active == 0:
            break
        time.sleep(0.05)
    assert sched.active == 0
    r = client.completions.create(model="gemma-3-270m", prompt="Hello", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens >= 1


def test_metrics(server, client):
    client.completions.create(model="gemma-3-270m", prompt="Hi", max_tokens=2)
    text = httpx.get(server[0] + "/metrics").text
    assert 'opengemma_requests_total{endpoint="completions",status="200"}' in text
    assert "opengemma_queue_depth 0" in text and "opengemma_completion_tokens_total" in text


def test_chat_page_is_served(server):
    r = httpx.get(server[0] + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text and 'id="stop"' in r.text
