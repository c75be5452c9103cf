"""The server under load (real default model): 32 concurrent streaming clients, bounded memory, a full queue."""

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.real_model

uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from helpers import running  # noqa: E402

PROMPTS = [f"Note {i}: the most surprising fact about the number {i * 7 + 3} is" for i in range(32)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def burst(client, prompts, max_tokens):
    """Every prompt as its own streaming client, all at once; returns prompt -> streamed text."""
    got, errors = {}, []

    def run(p):
        try:
            s = client.completions.create(
                model="gemma-3-270m", prompt=p, max_tokens=max_tokens, temperature=0, stream=True
            )
            got[p] = "".join(c.choices[0].text for c in s)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    return got


@pytest.mark.slow  # ~3 min on 2 cores; test_serve.py's concurrent streams stay in the default tier
def test_32_concurrent_streams_equal_alone_with_bounded_memory():
    import opengemma
    from opengemma.serve.app import create_app

    llm = opengemma.load("gemma-3-270m")
    alone = {p: llm.generate(p, max_new_tokens=10) for p in PROMPTS}
    # 8 rows for 32 clients: most wait in the queue and join the batch as rows free up; the engine reads the
    # device every 2 steps, so requests also finish inside a run of steps
    app = create_app(
        opengemma.load("gemma-3-270m"), model_name="gemma-3-270m", max_batch=8, max_queue=32, max_len=256, sync_every=2
    )
    with running(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert burst(client, PROMPTS, 10) == alone
        before = rss_mb()
        for _ in range(2):
            assert burst(client, PROMPTS, 10) == alone
        grown = rss_mb() - before
        sched = app.state.scheduler
        assert sched.active == 0 and sched.queued == 0
        # two more rounds of 32 requests leave no trace: no per-request state is kept
        assert grown < 48, f"RSS grew {grown:.0f} MB over 64 requests"


def test_full_queue_is_refused_and_the_server_recovers():
    import opengemma
    from opengemma.serve.app import create_app

    app = create_app(opengemma.load("gemma-3-270m"), model_name="gemma-3-270m", max_batch=1, max_queue=1, max_len=512)
    sched = app.state.scheduler
    body = {"model": "gemma-3-270m", "prompt": "Once upon a time", "max_tokens": 400, "stream": True, "temperature": 0}
    with running(app) as base, httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/completions", json=body) as first:
            assert first.status_code == 200
            while sched.active == 0:  # the first request holds the only row
                time.sleep(0.01)
            with http.stream("POST", base + "/v1/completions", json=body) as second:
                assert second.status_code == 200
                while sched.queued == 0:  # the second one waits in the queue
                    time.sleep(0.01)
                third = http.post(base + "/v1/completions", json=dict(body, stream=False))
                assert third.status_code == 503
                err = third.json()["error"]
                assert err["code"] == "queue_full" and "busy" in err["message"]
        for _ in range(200):  # both clients hung up: their row and queue place are freed
            if sched.active == 0 and sched.queued == 0:
                break
            time.sleep(0.05)
        r = http.post(base + "/v1/completions", json=dict(body, stream=False, max_tokens=3))
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
