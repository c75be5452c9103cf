"""Token ids -> streamed text with stop strings: the text layer shared by LLM.generate and the server."""

from __future__ import annotations

from typing import Sequence

from .tokenizer import Tokenizer


class TextStream:
    """Feed generated ids one at a time; get back text deltas that are final.

    Holds back an unfinished UTF-8 character (byte-fallback pieces) and any suffix that could still grow
    into a stop string; when a stop string appears, the text is cut before it and `stopped` is set.
    """

    def __init__(self, tokenizer: Tokenizer, stop: str | Sequence[str] | None = None):
        self.decoder = tokenizer.incremental_decoder()
        self.stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _held_back(self) -> int:
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta

    def push(self, token: int) -> str:
        """Add one generated id; returns the new final text (may be empty)."""
        if self.stopped:
            return ""
        self.text += self.decoder.push([token])
        if self.stops:
            start = max(0, self.emitted - max(map(len, self.stops)))
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        if not self.stopped:
            self.text += self.decoder.flush()
        return self._emit(len(self.text))
