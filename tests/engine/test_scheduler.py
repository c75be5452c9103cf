"""Continuous batching: requests join and leave a running batch; each output is what it would be alone."""

import queue
import threading

import pytest
from helpers import tiny_model

from opengemma.engine.generate import PromptTooLongError, generate
from opengemma.engine.scheduler import Request, Scheduler

PROMPTS = [
    [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 40, 41],
    [2, 77, 78, 79, 80, 81],
    [2, 9],
    [2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116],
]


@pytest.mark.parametrize(
    "name,sync_every", [("tiny-gemma", 1), ("tiny-gemma2", 1), ("tiny-gemma3", 1), ("tiny-gemma3", 3)]
)
def test_staggered_requests_equal_generating_alone(name, sync_every):
    model = tiny_model(name, std=0.3)
    lengths = [14, 5, 20, 9, 11]
    alone = [generate(model, [p], max_new_tokens=n)[0].tokens for p, n in zip(PROMPTS, lengths)]
    # fewer rows than requests: a queue; sync_every 3 reads the device every 3 steps (as on a GPU)
    sched = Scheduler(model, max_batch=2, max_len=64, prefill_chunk=4, sync_every=sync_every)
    reqs = []
    for i, (p, n) in enumerate(zip(PROMPTS, lengths)):
        reqs.append(sched.submit(Request(p, max_new_tokens=n)))
        for _ in range(i % 3):  # arrive while others are mid-generation
            sched.step()
    sched.run_until_idle()
    assert [r.tokens for r in reqs] == alone
    assert all(r.finish_reason == "length" and r.done.is_set() for r in reqs)
    assert sched.clock > 64  # the ring caches wrapped round


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = tiny_model("tiny-gemma3", std=0.3)
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=30, top_p=0.9, seed=11)
    solo = Scheduler(model, max_batch=1, max_len=64)
    a = solo.submit(Request(PROMPTS[2], **kw))
    solo.run_until_idle()
    busy = Scheduler(model, max_batch=3, max_len=64)
    others = [busy.submit(Request(p, max_new_tokens=10, temperature=1.0, seed=i)) for i, p in enumerate(PROMPTS[:2])]
    busy.step()
    b = busy.submit(Request(PROMPTS[2], **kw))
    busy.run_until_idle()
    assert a.tokens == b.tokens and all(o.done.is_set() for o in others)


def test_stop_ids_on_token_and_cancel_free_rows():
    model = tiny_model("tiny-gemma3", std=0.3)
    free = generate(model, [PROMPTS[0]], max_new_tokens=10)[0].tokens
    sched = Scheduler(model, max_batch=1, max_len=64)
    r1 = sched.submit(Request(PROMPTS[0], max_new_tokens=10, stop_ids=[free[4]]))
    sched.run_until_idle()
    assert r1.tokens == free[: free.index(free[4])] and r1.finish_reason == "stop"
    seen = []
    r2 = sched.submit(Request(PROMPTS[0], max_new_tokens=10, on_token=lambda t: seen.append(t) or len(seen) == 3))
    sched.run_until_idle()
    assert r2.tokens == free[:3] and r2.finish_reason == "stop"
    # a cancelled request leaves its row at the next step and the next one is admitted
    r3 = sched.submit(Request(PROMPTS[1], max_new_tokens=50))
    r4 = sched.submit(Request(PROMPTS[0], max_new_tokens=4))
    sched.step()
    sched.step()
    assert sched.rows[0] is r3
    r3.cancel()
    sched.step()
    assert r3.finish_reason == "cancelled" and sched.rows[0] is r4
    sched.run_until_idle()
    assert r4.tokens == free[:4]


def test_bad_requests_and_queue_limit():
    model = tiny_model("tiny-gemma3", std=0.3)
    sched = Scheduler(model, max_batch=1, max_len=32, max_queue=2)
    with pytest.raises(
        PromptTooLongError, match=r"prompt \(30 tokens\) \+ max_new_tokens \(8\) = 38 exceeds the context of 32"
    ):
        sched.submit(Request([2] * 30, max_new_tokens=8))
    with pytest.raises(ValueError, match="at least 1"):
        sched.submit(Request([2, 3], max_new_tokens=0))
    sched.submit(Request([2, 3], max_new_tokens=4))
    sched.submit(Request([2, 4], max_new_tokens=4))
    with pytest.raises(queue.Full):
        sched.submit(Request([2, 5], max_new_tokens=4))
    sched.run_until_idle()
    assert sched.active == 0 and sched.queued == 0


def test_engine_thread_serves_concurrent_submitters():
    model = tiny_model("tiny-gemma2", std=0.3)
    alone = [generate(model, [p], max_new_tokens=8)[0].tokens for p in PROMPTS]
    sched = Scheduler(model, max_batch=3, max_len=64)
    loop = threading.Thread(target=sched.serve_forever, daemon=True)
    loop.start()
    results = {}

    def client(i):
        r = sched.submit(Request(PROMPTS[i], max_new_tokens=8))
        assert r.done.wait(timeout=60)
        results[i] = r.tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sched.stop()
    loop.join(timeout=5)
    assert [results[i] for i in range(len(PROMPTS))] == alone
