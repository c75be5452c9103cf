"""Toy verifiers for the RLHF tests: dense rewards a tiny random policy can learn in a few steps."""


def vowels(prompt: str, completion: str, **fields) -> float:
    """The fraction of the answer's letters that are vowels (in [0, 1]; 0 for an answer with no letters)."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def echoes_target(prompt: str, completion: str, target: str = "", **fields) -> float:
    """1 when the answer contains the record's `target` field (a verifier reading an extra field)."""
    return float(bool(target) and target in completion)
