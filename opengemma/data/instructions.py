"""Verifiable instructions: constraints on a response's form that a program checks, so supervised fine-tuning data
can be made by rewriting a known answer to follow one, and a model's following measured without a judge. The idea
and most kinds are IFEval's (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models",
arXiv:2311.07911; its instruction ids are named per kind below).

    kind = KINDS["number_bullet_lists"]
    params = kind.draw(rng, Example(question, answer))  # None: this answer cannot honestly follow it
    prompt = question + " " + kind.phrase(rng, params)
    response = kind.apply(answer, params)          # the answer, rewritten to follow the instruction
    assert kind.check(response, params)            # what the evaluation runs on a model's reply

apply() never invents content: it reformats, changes case, wraps, or adds a fixed courtesy line, so a trained
response stays a faithful answer. Kinds whose following needs new content (at least N words, placeholders, two
different responses) are left out. Checks are IFEval's, except where IFEval lets a near miss pass that the
instruction's words rule out (an end phrase in the wrong case, a title that does not come first, sections out of
order): there they are stricter, as each kind's comment says. Words are whitespace-separated tokens (IFEval counts
nltk's word tokens); a sentence ends at ".", "!" or "?" (a closing quote or bracket may follow) before whitespace,
or at a line break, so "3.5" or "12:30" never split one, while an abbreviation such as "e.g." would.

HELDOUT_KINDS are never trained on: their following measures whether the skill generalizes to unseen constraints.

One file because: the kinds are a catalog, read side by side (phrasings, draw, apply, check), and share the
sentence and list helpers; splitting them by train and held out would hide that the two differ only in use.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\s*\n\s*")


def sentences(text: str) -> list[str]:
    return [s for s in _SPLIT.split(text.strip()) if s.strip()]


def words(text: str) -> list[str]:
    return text.split()


def _prose(answer: str) -> list[str]:
    """The sentences of a one-line answer with no markdown of its own (which would confuse list checks), or []."""
    if "\n" in answer or re.search(r"[*#<>`]", answer):
        return []
    return sentences(answer)


def _groups(items: list[str], n: int) -> list[str]:
    """n contiguous runs of the items, as even as possible (earlier runs longer), each joined by a space."""
    q, r = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(" ".join(items[i : i + size]))
        i += size
    return out


@dataclass(frozen=True)
class Example:
    """What an instruction is attached to: the request, its plain answer, and a short topic (a title's words)."""

    question: str
    answer: str
    topic: str = ""


@dataclass(frozen=True)
class Kind:
    name: str
    phrasings: tuple[str, ...]  # str.format templates over the params ({s}: "s" unless params["n"] == 1)
    draw: Callable[[random.Random, Example], dict | None]  # the params, or None: the answer cannot follow it
    apply: Callable[[str, dict], str]
    check: Callable[[str, dict], bool]
    system: bool = False  # params do not depend on the answer: may be stated once, in a system message
    followup: bool = True  # may be asked of the previous answer ("Now rewrite your answer. ...")

    def phrase(self, rng: random.Random, params: dict) -> str:
        return rng.choice(self.phrasings).format(s="" if params.get("n") == 1 else "s", **params)


def _always(rng, ex) -> dict:
    return {}


def _n_of_sentences(lo: int, hi: int) -> Callable:
    def draw(rng, ex):
        k = len(_prose(ex.answer))
        return {"n": rng.randint(lo, min(k, hi))} if k >= lo else None

    return draw


# -- case (change_case:english_capital, english_lowercase) ------------------------------------------------------
CAPITAL = Kind(
    "english_capital",
    (
        "Your entire response should be in English, and in all capital letters.",
        "Answer in all capital letters.",
        "Write your whole reply in capital letters only.",
        "Please respond using only uppercase letters.",
    ),
    lambda rng, ex: {} if ex.answer.upper().isupper() else None,
    lambda a, p: a.upper(),
    lambda r, p: r.isupper(),  # every cased character upper, and at least one
    system=True,
)
LOWERCASE = Kind(
    "english_lowercase",
    (
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
        "Answer in lowercase letters only.",
        "Do not use any capital letters in your reply.",
        "Write your whole answer in lowercase.",
    ),
    lambda rng, ex: {} if ex.answer.lower().islower() else None,
    lambda a, p: a.lower(),
    lambda r, p: r.islower(),
    system=True,
)


# -- lists and layout (detectable_format:number_bullet_lists, length_constraints:number_paragraphs) --------------
def _bullets(response: str) -> tuple[int, int]:
    """(markdown bullet lines, "*" or "-" as IFEval counts them; numbered lines "1." or "1)")."""
    lines = response.splitlines()
    return (
        sum(bool(re.match(r"\s*[*-]\s+\S", line)) for line in lines),
        sum(bool(re.match(r"\s*\d+[.)]\s+\S", line)) for line in lines),
    )


BULLETS = Kind(
    "number_bullet_lists",
    (
        "Your answer must contain exactly {n} bullet point{s}. Use the markdown bullet points such as:\n"
        "* This is point 1.\n* This is point 2",
        'Answer with exactly {n} bullet point{s}, each on its own line starting with "* ".',
        'Format your reply as a list of exactly {n} markdown bullet point{s} ("* ").',
    ),
    _n_of_sentences(2, 5),
    lambda a, p: "\n".join("* " + g for g in _groups(_prose(a), p["n"])),
    lambda r, p: _bullets(r) == (p["n"], 0),  # IFEval counts "*" and "-" bullets; a numbered list is not one
)


def _numbered_check(response: str, params: dict) -> bool:
    nums = [int(m.group(1)) for line in response.splitlines() if (m := re.match(r"\s*(\d+)[.)]\s+\S", line))]
    return nums == list(range(1, params["n"] + 1)) and _bullets(response)[0] == 0


NUMBERED = Kind(
    "numbered_list",
    (
        "Answer as a numbered list with exactly {n} item{s} (1., 2., ...).",
        "Give your answer as exactly {n} numbered point{s}.",
        'Format your reply as a numbered list of {n} item{s}, each line starting with its number, like "1. ".',
    ),
    _n_of_sentences(2, 5),
    lambda a, p: "\n".join(f"{i}. {g}" for i, g in enumerate(_groups(_prose(a), p["n"]), 1)),
    _numbered_check,  # items numbered 1..n in order, none missing or repeated
)


def _paragraphs_check(response: str, params: dict) -> bool:
    """Split at dividers, lines holding only "***" (a markdown divider is a line of its own: IFEval splits at "***"
    anywhere, so a reply that echoes the instruction's "... divider: *** ..." inline passed); an empty piece is
    allowed only first or last (a divider before or after all), as IFEval's."""
    parts = re.split(r"(?m)^[ \t]*\*\*\*[ \t]*$", response)
    if any("***" in p for p in parts):
        return False
    inner = parts[1:-1]
    n = len(parts) - (not parts[0].strip()) - (len(parts) > 1 and not parts[-1].strip())
    return all(p.strip() for p in inner) and n == params["n"]


PARAGRAPHS = Kind(
    "number_paragraphs",
    (
        "There should be {n} paragraph{s}. Paragraphs are separated with the markdown divider: ***",
        "Split your answer into exactly {n} paragraph{s}, separated by the markdown divider ***.",
        "Write {n} paragraph{s}, with a line holding only *** between consecutive paragraphs.",
    ),
    _n_of_sentences(2, 4),
    lambda a, p: "\n\n***\n\n".join(_groups(_prose(a), p["n"])),
    _paragraphs_check,
)

# -- start and end (startend:end_checker, startend:quotation) ---------------------------------------------------
END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
    "Hope this helps!",
    "That is all.",
    "Have a great day!",
)
END = Kind(
    "end_checker",
    (
        'Finish your response with this exact phrase: "{phrase}". No other words should follow it.',
        'End your reply with the exact words "{phrase}"',
        'Your answer must end with the phrase "{phrase}", with nothing after it.',
    ),
    lambda rng, ex: {"phrase": rng.choice(END_PHRASES)},
    lambda a, p: a.rstrip() + "\n\n" + p["phrase"],
    lambda r, p: r.rstrip().endswith(p["phrase"]),  # exact, case included (IFEval lowercases both)
    system=True,
)
START_WORDS = {"Sure": "Sure! ", "Certainly": "Certainly! ", "Okay": "Okay. ", "Alright": "Alright. ",
               "Absolutely": "Absolutely! ", "Answer": "Answer: "}  # fmt: skip


def _start_check(response: str, params: dict) -> bool:
    m = re.match(r"\s*(\S+)", response)
    return bool(m) and m.group(1).rstrip(".,!?:;") == params["word"]


START = Kind(
    "start_word",
    (
        'Start your response with the word "{word}".',
        'Begin your reply with the word "{word}".',
        'The first word of your answer must be "{word}".',
    ),
    lambda rng, ex: {"word": rng.choice(list(START_WORDS))},
    lambda a, p: START_WORDS[p["word"]] + a,
    _start_check,  # the first word, trailing punctuation aside, exactly ("Surely" or "sure" is not "Sure")
    system=True,
)
QUOTATION = Kind(
    "quotation",
    (
        "Wrap your entire response with double quotation marks.",
        'Put your whole answer inside double quotes (").',
        "Enclose the entire reply in double quotation marks.",
    ),
    _always,
    lambda a, p: f'"{a}"',
    lambda r, p: len(s := r.strip()) > 2 and s[0] == s[-1] == '"' and bool(s[1:-1].strip()),
    system=True,
)


# -- content (keywords:existence, punctuation:no_comma, detectable_content:postscript, detectable_format:title,
#    json_format, length_constraints:number_words) ------------------------------------------------------------
KEYWORD_LINES = {
    "helpful": "I hope this is helpful.",
    "glad": "I am glad to help.",
    "question": "Thanks for the question.",
    "clear": "I hope that is clear.",
    "happy": "I am happy to explain more.",
    "check": "Feel free to check my work.",
    "welcome": "You are welcome to ask more.",
    "simple": "It is simple once you see it.",
}


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def _keyword_draw(rng, ex):
    free = [k for k in KEYWORD_LINES if not _has_word(ex.answer, k)]
    return {"keyword": rng.choice(free)} if free else None


def _append(answer: str, line: str) -> str:
    return answer.rstrip() + (" " if answer.rstrip()[-1:] in ".!?" and "\n" not in answer else "\n\n") + line


KEYWORD = Kind(
    "keyword_existence",
    (
        'Include the keyword "{keyword}" in your response.',
        'Make sure the word "{keyword}" appears in your answer.',
        'Use the word "{keyword}" somewhere in your reply.',
    ),
    _keyword_draw,
    lambda a, p: _append(a, KEYWORD_LINES[p["keyword"]]),
    lambda r, p: _has_word(r, p["keyword"]),  # a whole word: "helpfully" does not hold "helpful"
    system=True,
)


def _drop_commas(answer: str) -> str:
    s = re.sub(r"(?<=\d)[,，](?=\d{3}\b)", "", answer)  # 1,000 -> 1000
    s = re.sub(r"[ \t]*[,，][ \t]*", " ", s)
    return re.sub(r"[ \t]{2,}", " ", s).strip()


NO_COMMA = Kind(
    "no_comma",
    (
        "In your entire response, refrain from the use of any commas.",
        "Do not use any commas in your answer.",
        "Your reply must not contain a single comma.",
    ),
    lambda rng, ex: {} if re.search(r"\w", _drop_commas(ex.answer)) else None,
    lambda a, p: _drop_commas(a),
    lambda r, p: "," not in r and "，" not in r and bool(r.strip()),
    system=True,
)
POSTSCRIPT_NOTES = ("I hope this helps.", "Feel free to ask another question.", "Thanks for asking!",
                    "Let me know if anything is unclear.")  # fmt: skip


def _postscript_check(response: str, params: dict) -> bool:
    """The last line starting with the marker (case included; IFEval lowercases) has text after the marker, and
    the body comes before it."""
    lines = response.strip().splitlines()
    at = [i for i, line in enumerate(lines) if line.lstrip().startswith(params["marker"])]
    if not at:
        return False
    i = at[-1]
    return bool(lines[i].lstrip()[len(params["marker"]) :].strip()) and any(line.strip() for line in lines[:i])


POSTSCRIPT = Kind(
    "postscript",
    (
        "At the end of your response, please explicitly add a postscript starting with {marker}",
        "Add a postscript at the end that starts with {marker}",
        'Finish with a postscript beginning with "{marker}".',
    ),
    lambda rng, ex: {"marker": rng.choice(["P.S.", "P.P.S"]), "note": rng.choice(POSTSCRIPT_NOTES)},
    lambda a, p: a.rstrip() + f"\n\n{p['marker']} {p['note']}",
    _postscript_check,
    system=True,
)


def _title_check(response: str, params: dict) -> bool:
    """The first line is the title (IFEval finds one anywhere; these phrasings say it comes first), and a body
    follows."""
    first, _, body = response.strip().partition("\n")
    return re.fullmatch(r"<<[^<>\n]*[^\s<>][^<>\n]*>>", first.strip()) is not None and bool(body.strip())


TITLE = Kind(
    "title",
    (
        "Begin your answer with a title wrapped in double angular brackets, such as <<poem of joy>>.",
        "Start with a title in double angular brackets, like <<my title>>.",
        "Give your answer a title first, written as <<title>>.",
    ),
    lambda rng, ex: {"title": ex.topic or rng.choice(["Answer", "My Answer", "The Answer", "A Short Answer"])},
    lambda a, p: f"<<{p['title']}>>\n\n{a}",
    _title_check,
)


def _json_check(response: str, params: dict) -> bool:
    s = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # IFEval accepts a fenced block
        s = s.removeprefix(fence)
    try:
        obj = json.loads(s.removesuffix("```").strip())
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get(params["key"]) not in (None, "")


JSON = Kind(
    "json_format",
    (
        'Wrap your entire output in JSON format, with your answer under the key "{key}".',
        'Reply with a JSON object only, holding your answer in the field "{key}".',
        'Format the whole response as valid JSON, with the answer in the key "{key}".',
    ),
    lambda rng, ex: {"key": rng.choice(["answer", "response", "result", "reply"])},
    lambda a, p: json.dumps({p["key"]: a}, ensure_ascii=False),
    _json_check,
    system=True,
)


def _max_words_draw(rng, ex):
    w = len(words(ex.answer))
    return {"n": rng.choice([w + rng.randint(0, 4), -(-(w + 1) // 5) * 5, -(-(w + 1) // 10) * 10])} if w else None


MAX_WORDS = Kind(
    "max_words",
    ("Answer in at most {n} words.", "Use no more than {n} words.", "Keep your reply to {n} words or fewer."),
    _max_words_draw,
    lambda a, p: a,
    lambda r, p: 1 <= len(words(r)) <= p["n"],
)


# -- held out (combination:repeat_prompt, detectable_format:multiple_sections, number_highlighted_sections,
#    length_constraints:number_sentences) ---------------------------------------------------------------------
def _repeat_check(response: str, params: dict) -> bool:
    """The request word for word (case included; IFEval lowercases), then an answer that is not this instruction:
    the phrasings say not to repeat it, and a model that only echoes its prompt would otherwise pass."""
    s, prompt = response.strip(), params["prompt"].strip()
    rest = s[len(prompt) :].strip()
    return s.startswith(prompt) and bool(rest) and not any(p[:40] in rest for p in REPEAT_PHRASINGS)


REPEAT_PHRASINGS = (
    "First repeat the request word for word without change, then give your answer (1. do not say any words or "
    "characters before repeating the request; 2. the request you need to repeat does not include this sentence)",
    "Before you answer, repeat my request exactly as written (leaving out this sentence), then answer it.",
)


REPEAT = Kind(
    "repeat_prompt",
    REPEAT_PHRASINGS,
    lambda rng, ex: {"prompt": ex.question.strip()} if ex.question.strip() else None,
    lambda a, p: p["prompt"].strip() + "\n\n" + a,
    _repeat_check,
    followup=False,
)


def _sections_check(response: str, params: dict) -> bool:
    """Headers "SPLITTER k" at line starts numbered 1..n in order, each section non-empty (IFEval: at least n
    splitters anywhere)."""
    heads = list(re.finditer(rf"(?m)^[ \t]*{re.escape(params['splitter'])} (\d+)[ \t]*[:.]?", response))
    bodies = [response[h.end() : (heads[i + 1].start() if i + 1 < len(heads) else len(response))]
              for i, h in enumerate(heads)]  # fmt: skip
    return [int(h.group(1)) for h in heads] == list(range(1, params["n"] + 1)) and all(b.strip() for b in bodies)


def _sections_draw(rng, ex):
    d = _n_of_sentences(2, 4)(rng, ex)
    return d and {**d, "splitter": rng.choice(["SECTION", "Section", "PART"])}


SECTIONS = Kind(
    "multiple_sections",
    (
        "Your response must have {n} section{s}. Mark the beginning of each section with {splitter} X, such as:\n"
        "{splitter} 1\n[content of section 1]\n{splitter} 2\n[content of section 2]",
        'Divide your answer into {n} section{s}, each starting on a new line with "{splitter} X", X its number.',
    ),
    _sections_draw,
    lambda a, p: "\n\n".join(f"{p['splitter']} {i}\n{g}" for i, g in enumerate(_groups(_prose(a), p["n"]), 1)),
    _sections_check,
)


def _highlights(response: str) -> int:
    """IFEval's count: *spans* and **spans** within a line, non-empty."""
    one = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    two = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h.removeprefix("**").removesuffix("**").strip()]
    return len(one) + len(two)


HIGHLIGHTS = Kind(
    "highlighted_sections",
    (
        "Highlight at least {n} section{s} in your answer with markdown, i.e. *highlighted section*.",
        "Use markdown to highlight at least {n} part{s} of your answer, like *this*.",
    ),
    _n_of_sentences(1, 3),
    lambda a, p: " ".join(f"*{x}*" if i < p["n"] else x for i, x in enumerate(_prose(a))),
    lambda r, p: _highlights(r) >= p["n"],
)
SENTENCES = Kind(
    "number_sentences",
    (
        "Answer in exactly {n} sentence{s}.",
        "Your response should contain exactly {n} sentence{s}.",
        "Use exactly {n} sentence{s} in your reply.",
    ),
    lambda rng, ex: {"n": len(_prose(ex.answer))} if _prose(ex.answer) else None,
    lambda a, p: a,
    lambda r, p: len(sentences(r)) == p["n"],
)

TRAIN_KINDS = (CAPITAL, LOWERCASE, BULLETS, NUMBERED, PARAGRAPHS, END, START, QUOTATION, KEYWORD, NO_COMMA,
               POSTSCRIPT, TITLE, JSON, MAX_WORDS)  # fmt: skip
HELDOUT_KINDS = (REPEAT, SECTIONS, HIGHLIGHTS, SENTENCES)
KINDS = {k.name: k for k in TRAIN_KINDS + HELDOUT_KINDS}


def follows(kind: str, response: str, params: dict, instruction: str | None = None) -> bool:
    """Whether `response` follows instruction `kind` with `params` (a record's "kind", "params" and "instruction").
    A response that repeats the instruction's words never does: it echoes rather than follows, and echoing would
    pass some checks on the instruction's own examples ("like *this*", "SECTION 1 [content of section 1]"), which
    is how a pretrained model, parroting its prompt, scored on IFEval-style checks."""
    return not (instruction and instruction.strip() in response) and KINDS[kind].check(response, params)
