"""Token ids -> streamed text: final UTF-8 deltas (IncrementalDecoder) and stop strings (TextStream), the text
layer shared by LLM.generate, the server and evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # the tokenizer is passed in; this module needs only its decode() and byte_value()
    from .tokenizer import Tokenizer


class IncrementalDecoder:
    """Streams text from a growing list of generated ids.

    Byte-fallback pieces can split one character (say an emoji) over several tokens; decoding a
    prefix that ends inside such a character would show U+FFFD. ``step`` holds those bytes back
    until the character is complete, so every delta is final text and
    ``"".join(deltas) + flush() == tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: "Tokenizer"):
        self.tokenizer = tokenizer
        self._ids: list[int] = []
        # Text of ids[:read] has been emitted. Each step re-decodes from `prefix` (one step back)
        # so a piece is decoded with left context (some tokenizers strip a leading space).
        self._prefix = 0
        self._read = 0

    def step(self, ids: Sequence[int]) -> str:
        """Given all ids generated so far (a list that only grows), return the new text."""
        ids = [int(i) for i in ids]
        if len(ids) < len(self._ids) or ids[: self._read] != self._ids[: self._read]:
            raise ValueError("IncrementalDecoder.step expects the same, growing list of ids")
        self._ids = ids
        return self._emit(len(ids) - self._incomplete_tail())

    def push(self, new_ids: Iterable[int]) -> str:
        """Append newly generated ids and return the new text."""
        return self.step([*self._ids, *new_ids])

    def flush(self) -> str:
        """Emit whatever is held back (an unfinished UTF-8 sequence decodes as U+FFFD)."""
        return self._emit(len(self._ids))

    def _emit(self, ready: int) -> str:
        if ready <= self._read:
            return ""
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix : ready])
        if after.startswith(before):
            delta = after[len(before) :]
        else:  # cannot happen for Gemma's tokenizer; stay exact rather than clever
            delta = decode(self._ids[:ready])[len(decode(self._ids[: self._read])) :]
        self._prefix, self._read = self._read, ready
        return delta

    def _incomplete_tail(self) -> int:
        """How many trailing byte pieces form the start of a not-yet-complete UTF-8 character."""
        byte_of = self.tokenizer.byte_value
        for n in range(1, min(4, len(self._ids) - self._read + 1)):
            b = byte_of(self._ids[-n])
            if b is None or b < 0x80:
                return 0  # not a byte piece, or ASCII: nothing pending
            if b < 0xC0:
                continue  # continuation byte: look further back for the lead byte
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n if n < need else 0
        return 0


class TextStream:
    """Feed generated ids one at a time; get back text deltas that are final.

    Holds back an unfinished UTF-8 character (byte-fallback pieces) and any suffix that could still grow
    into a stop string; when a stop string appears, the text is cut before it and `stopped` is set.
    """

    def __init__(self, tokenizer: "Tokenizer", stop: str | Sequence[str] | None = None):
        self.decoder = IncrementalDecoder(tokenizer)
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
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
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
