"""Continuous batching: one engine loop; requests join the running batch and leave it at any decode step.

The cache has `max_batch` rows; every row advances on one shared clock (positions are clock ticks and cache
slots are positions modulo the cache length, so the caches are rings that never need compacting). A new
request takes a free row by prefilling its prompt into that row just before the clock (Gemma.forward's
`row=`), then decodes in lockstep with the others. A row's keys before its own start are masked by its
`pad`, so what ran in that row before, or runs beside it, cannot change its output (tested: greedy output
equals generating alone). Each request samples from its own seeded generator, so seeded sampling does
not depend on the batch either.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..model import Gemma
from .generate import PromptTooLongError, compiled_decode_step, decode_step, prefill_chunks
from .sampling import sample


@dataclass
class Request:
    prompt: Sequence[int]
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: Sequence[int] = ()
    # called for every generated token from the engine thread; returning True stops the request
    on_token: Callable[[int], bool | None] | None = None
    # called once when the request ends (finish_reason: "stop", "length" or "cancelled")
    on_finish: Callable[["Request"], None] | None = None
    id: int = field(default_factory=itertools.count().__next__)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the engine to drop this request (e.g. its client went away); its row is freed at once."""
        self.cancelled = True


class Scheduler:
    def __init__(
        self,
        model: Gemma,
        max_batch: int = 8,
        max_len: int | None = None,
        prefill_chunk: int = 256,
        compile: bool | None = None,
        max_queue: int = 256,
        sync_every: int | None = None,
    ):
        self.model = model
        self.device = model.norm.weight.device
        self.max_batch = max_batch
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.prefill_chunk = prefill_chunk
        on_cuda = self.device.type == "cuda"
        self.step_fn = compiled_decode_step(model) if (on_cuda if compile is None else compile) else decode_step
        # Decode steps per host read: on a GPU each read is a sync that stalls the queue of kernels, so
        # tokens are read (and requests admitted or retired) every few steps; a row that finishes inside
        # a run of steps just idles to its end. The CPU has nothing to overlap: read every step.
        self.sync_every = max(1, sync_every or (8 if on_cuda else 1))
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.rows: list[Request | None] = [None] * max_batch
        self.generators: list[torch.Generator | None] = [None] * max_batch
        B = max_batch
        self.clock = self.max_len  # any start works; this keeps every prompt start >= 0
        self.pad = torch.full((B,), self.clock, dtype=torch.long, device=self.device)
        self.next_tok = torch.zeros(B, dtype=torch.long, device=self.device)
        self.temperature = torch.zeros(B, device=self.device)
        self.top_k = torch.zeros(B, dtype=torch.long, device=self.device)
        self.top_p = torch.ones(B, device=self.device)
        model.setup_cache(B, self.max_len, prefill_chunk=prefill_chunk)
        self._wake = threading.Event()
        self._stop = False

    # -- API -----------------------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        n = len(request.prompt)
        if n == 0:
            raise ValueError("the prompt needs at least one token (<bos>)")
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        if n + request.max_new_tokens > self.max_len:
            raise PromptTooLongError(
                f"prompt ({n} tokens) + max_new_tokens ({request.max_new_tokens}) = "
                f"{n + request.max_new_tokens} exceeds the context of {self.max_len} tokens"
            )

    def submit(self, request: Request) -> Request:
        """Queue a request (thread-safe). Raises queue.Full when the queue is at its limit."""
        self.check(request)
        self.waiting.put_nowait(request)
        self._wake.set()
        return request

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def queued(self) -> int:
        return self.waiting.qsize()

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run the decode step once per path (greedy, sampling) on the idle rows, so that compiling it
        happens before the first request instead of during it. Idle rows attend to nothing but themselves."""
        if any(r is not None for r in self.rows):
            raise RuntimeError("warmup() is for an idle scheduler")
        u = torch.zeros(self.max_batch, device=self.device)
        pos = torch.tensor([self.clock], device=self.device)
        for greedy in (True, False):
            self.step_fn(
                self.model, self.next_tok, pos, self.pad, self.temperature, self.top_k, self.top_p, u, greedy, None
            )
        self.pad.fill_(self.clock + 1)
        self.clock += 1

    def run_until_idle(self) -> None:
        while self.step():
            pass

    def serve_forever(self) -> None:
        """The engine loop for a server: runs steps while there is work, sleeps otherwise."""
        while not self._stop:
            if not self.step():
                self._wake.wait(timeout=0.5)
                self._wake.clear()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    # -- one iteration -------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> bool:
        """Admit waiting requests into free rows, then one decode step for every row. Returns whether any
        work remains."""
        for row in range(self.max_batch):
            if self.rows[row] is not None and self.rows[row].cancelled:
                self._finish(row, "cancelled")
        while None in self.rows and not self.waiting.empty():
            try:
                req = self.waiting.get_nowait()
            except queue.Empty:
                break
            if req.cancelled:
                req.finish_reason = "cancelled"
                self._notify(req)
                continue
            self._admit(self.rows.index(None), req)
        if all(r is None for r in self.rows):
            return not self.waiting.empty()

        # Decode sync_every - 1 more tokens on the device, read them all at once and deliver them in
        # order, then decode the token after them (delivered next time).
        pending = [self.next_tok]
        for _ in range(self.sync_every - 1):
            self._decode()
            pending.append(self.next_tok)
        toks = torch.stack(pending, 1).tolist()  # (B, sync_every): the one host read
        for row, req in enumerate(self.rows):
            for tok in toks[row] if req is not None else ():
                if self.rows[row] is not req:  # finished earlier in this run of steps
                    break
                self._deliver(row, req, tok)
        if all(r is None for r in self.rows):
            return not self.waiting.empty()
        self._decode()
        return True

    def _decode(self) -> None:
        u = torch.zeros(self.max_batch, device=self.device)
        greedy = True
        for row, req in enumerate(self.rows):
            if req is not None and req.temperature > 0:
                greedy = False
                u[row] = torch.rand((), generator=self.generators[row]).item()
        pos = torch.tensor([self.clock], device=self.device)
        self.next_tok = self.step_fn(
            self.model, self.next_tok, pos, self.pad, self.temperature, self.top_k, self.top_p, u, greedy, None
        ).clone()
        self.clock += 1

    def _admit(self, row: int, req: Request) -> None:
        self.rows[row] = req
        gen = torch.Generator()
        gen.manual_seed(req.seed if req.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        self.generators[row] = gen
        self.temperature[row], self.top_k[row], self.top_p[row] = req.temperature, req.top_k, req.top_p
        prompt = list(req.prompt)
        start = self.clock - len(prompt)
        self.pad[row] = start
        for _, _, logits in prefill_chunks(
            self.model,
            torch.tensor([prompt], device=self.device),
            start,
            self.prefill_chunk,
            pad=self.pad[row : row + 1],
            row=row,
            last_only=True,
            bounded=False,
        ):
            pass
        u = torch.rand(1, generator=gen).to(self.device)
        self.next_tok[row] = sample(
            logits[:, -1], self.temperature[row : row + 1], self.top_k[row : row + 1], self.top_p[row : row + 1], u
        )[0]

    def _deliver(self, row: int, req: Request, tok: int) -> None:
        if tok in req.stop_ids:
            return self._finish(row, "stop")
        req.tokens.append(tok)
        stop = req.on_token(tok) if req.on_token is not None else False
        if stop:
            self._finish(row, "stop")
        elif len(req.tokens) >= req.max_new_tokens:
            self._finish(row, "length")

    def _finish(self, row: int, reason: str) -> None:
        req = self.rows[row]
        req.finish_reason = reason
        self.rows[row] = None
        self.generators[row] = None
        self.pad[row] = self.clock + 1  # the idle row attends to nothing it could be hurt by
        self.temperature[row] = 0.0
        self._notify(req)

    @staticmethod
    def _notify(req: Request) -> None:
        req.done.set()
        if req.on_finish is not None:
            req.on_finish(req)
