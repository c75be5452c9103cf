"""The one detector of personal data, for both sides: find_sensitive(text) -> [Finding(kind, text, start, end)];
redact(text) -> (text with each finding replaced by its kind's tag, the findings).

The data pipeline redacts what it finds before tokenizing (the Gemma report removes personal and sensitive
data from the pretraining mix); the memorization study (eval/memorization.py) runs the same detector over
memorized model outputs (the Gemma report runs a sensitive-data classifier there). Each kind is a candidate regex plus a validator (Luhn for cards, mod 97 for IBANs, the
issuing rules for SSNs and National Insurance numbers, octet ranges for IPv4, the stdlib parser for
IPv6), because precision matters more than recall here: a detector that fires on dates, prices or
version numbers would bury the one real leak under noise.

Kinds: email, phone, credit_card, iban, us_ssn, uk_nino, ipv4, ipv6, street_address.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from typing import Collection


@dataclass(frozen=True)
class Finding:
    kind: str
    text: str
    start: int  # character offsets into the scanned text: text == scanned[start:end]
    end: int


# Digits must not continue a longer number on either side ("1234-5678" inside "91234-56789", "3.14159").
_NO_DIGIT_BEFORE = r"(?<![\w.+-])(?<!\d[ .-])"
_NO_DIGIT_AFTER = r"(?![\w+-]|[ .-]\d|\.\w)"

# -- email -------------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"  # local part, no dot at its ends
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b(?!@)"
)


def _emails(text: str):
    for m in _EMAIL.finditer(text):
        if ".." not in m.group():
            yield "email", m.start(), m.end()


# -- phone numbers -----------------------------------------------------------------------------------
# +CC then digit groups: "+44 20 7946 0958", "+1 (415) 555-2671", "+33 1 23 45 67 89". The last group has two
# digits or more, so that a signed decimal ("+35236450.6") is not a phone number.
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){0,5}[ .-]?\d{2,5}" + _NO_DIGIT_AFTER
)
_PHONE_US = re.compile(  # (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671; separators required
    _NO_DIGIT_BEFORE + r"(?:(\()([2-9]\d{2})\) ?|([2-9]\d{2})([ .-]))([2-9]\d{2})([ .-])(\d{4})" + _NO_DIGIT_AFTER
)
_PHONE_UK = re.compile(  # 020 7946 0958, 0161 496 0000, 01632 960001, 07700 900123 (national 0 + 9-10 digits)
    _NO_DIGIT_BEFORE + r"\(?0[1-9]\d{1,4}\)?(?: \d{3,6}){1,2}" + _NO_DIGIT_AFTER
)


def _phones(text: str):
    for m in _PHONE_INTL.finditer(text) if "+" in text else ():  # a regex scan costs a match try per character
        if 8 <= sum(c.isdigit() for c in m.group()) <= 15:  # E.164 allows at most 15 digits
            yield "phone", m.start(), m.end()
    for m in _PHONE_US.finditer(text):
        paren, sep1, sep2 = m.group(1), m.group(4), m.group(6)
        if paren or sep1 == sep2:  # "415-555.2671" mixes separators: more likely not a phone number
            yield "phone", m.start(), m.end()
    for m in _PHONE_UK.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if len(digits) in (10, 11) and digits[1] in "123578":  # UK national numbers: 0 then 9-10 digits
            yield "phone", m.start(), m.end()


# -- payment cards and IBANs -------------------------------------------------------------------------
_CARD = re.compile(_NO_DIGIT_BEFORE + r"\d{4}(?:([ -]?)\d{2,6}){2,4}" + _NO_DIGIT_AFTER)
# Issuer prefixes (IIN ranges): random digit strings pass Luhn one time in ten, the prefix check removes
# most of those (timestamps, order numbers, ISBNs). Visa 4; Mastercard 51-55 and 2221-2720; Maestro,
# Discover and UnionPay 5x/6x; Amex 34, 37; Diners 300-305, 36, 38, 39; JCB 3528-3589.
_CARD_IIN = re.compile(r"[456]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|3(?:0[0-5]|[689])|35(?:2[89]|[3-8]\d)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)  # double every second digit from the right
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _cards(text: str):
    for m in _CARD.finditer(text):
        s = m.group()
        seps = set(re.findall(r"\D", s))
        if len(seps) > 1:
            continue
        digits = re.sub(r"\D", "", s)
        groups = re.split(r"[ -]", s)
        # grouped numbers are printed 4-4-4-4(-3) or, for Amex/Diners, 4-6-5 / 4-6-4
        if seps and not (all(len(g) == 4 for g in groups[:-1]) or [len(g) for g in groups] in ([4, 6, 5], [4, 6, 4])):
            continue
        if 13 <= len(digits) <= 19 and _CARD_IIN.match(digits) and luhn_valid(digits):
            yield "credit_card", m.start(), m.end()


_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def iban_valid(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]  # ISO 13616: move the country code and check digits to the end, letters -> 10..35
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ibans(text: str):
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            yield "iban", m.start(), m.end()


# -- national identifiers ----------------------------------------------------------------------------
_SSN = re.compile(_NO_DIGIT_BEFORE + r"(\d{3})([ -])(\d{2})\2(\d{4})" + _NO_DIGIT_AFTER)


def _ssns(text: str):
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        # never issued: area 000, 666 or 9xx (ITINs), group 00, serial 0000 (SSA rules)
        if area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000":
            yield "us_ssn", m.start(), m.end()


# UK National Insurance number: two letters, six digits, a suffix A-D. HMRC never issues D, F, I, Q, U, V
# as either prefix letter, nor O second; nor the prefixes BG, GB, KN, NK, NT, TN, ZZ.
_NINO = re.compile(r"\b([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b")
_NINO_BAD_PREFIX = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _ninos(text: str):
    for m in _NINO.finditer(text):
        if m.group(1) not in _NINO_BAD_PREFIX:
            yield "uk_nino", m.start(), m.end()


# -- IP addresses ------------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w-]|\.\w)")
_VERSION_WORD = re.compile(r"\b(?:version|release|ver\.?|v)\s*$", re.I)
# "1.1.2.1 PEP 657: ..." heading a line and underlined on the next (Info and reST headings: "....", "====") is a
# section number: 3,835 of the 4,115 dotted quads of the Python manual (python3.11.info) were such headings.
_LINE_START = re.compile(r"(?:^|\n)[ \t]*$")
_UNDERLINED_TITLE = re.compile(r" +\S[^\n]*\n[ \t]*([.=*~^-])\1{2,}[ \t]*(?:\n|$)")


def _ipv4s(text: str):
    if text.count(".") < 3:
        return
    for m in _IPV4.finditer(text):
        octets = m.groups()
        if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
            continue
        if octets[0] == "0" and m.group() != "0.0.0.0":  # 0.x.y.z is not routable; "0.12.0.0" is a version
            continue
        if _VERSION_WORD.search(text[max(0, m.start() - 10) : m.start()]):  # "version 1.2.3.4"
            continue
        if _LINE_START.search(text[max(0, m.start() - 20) : m.start()]) and _UNDERLINED_TITLE.match(text, m.end()):
            continue  # "1.1.2.1 PEP 657: Fine-grained error locations" (a section heading)
        yield "ipv4", m.start(), m.end()


_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\w)")


def _ipv6s(text: str):
    if text.count(":") < 2:
        return
    for m in _IPV6.finditer(text):
        s = m.group()
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        # "::", "a::b", "dead::beef" or "1::2" are more often code or ratios than addresses: want a digit,
        # two groups and four hex digits
        hex_digits = sum(c in string.hexdigits for c in s)
        if any(c.isdigit() for c in s) and sum(1 for g in s.split(":") if g) >= 2 and hex_digits >= 4:
            yield "ipv6", m.start(), m.end()


# -- street addresses --------------------------------------------------------------------------------
_STREET_TYPES = (
    "Street|Avenue|Road|Lane|Boulevard|Drive|Court|Place|Way|Terrace|Close|Crescent|Square|Parkway|"
    "Highway|Circle|Gardens|Row|Mews|Alley"
)
_STREET_ABBREVIATIONS = "St|Ave|Rd|Ln|Blvd|Dr|Ct|Pl|Sq|Pkwy|Hwy|Cir"  # these keep their period: "12 Main St."
# A house number (221, 221B, 12-14), then one to four capitalized name words or an ordinal ("5th"), then a
# street type. Capitalization is required: "in 1999 the street" is not an address.
_STREET = re.compile(
    r"(?<![\w.,/-])\d{1,5}(?:-\d{1,5})?[A-Za-z]? (?:(?:[A-Z][a-z'’]+|[A-Z]\.|\d{1,3}(?:st|nd|rd|th)) ){1,4}"
    rf"(?:(?:{_STREET_TYPES})\b|(?:{_STREET_ABBREVIATIONS})\b\.?)"
)
_COPYRIGHT = re.compile(r"(?:copyright|\(c\)|©)[^\n]{0,40}$", re.I)


def _streets(text: str):
    for m in _STREET.finditer(text):
        # "Copyright 2016 Iain Lane": a year and a person's name, not an address
        if not _COPYRIGHT.search(text[max(0, m.start() - 60) : m.start()]):
            yield "street_address", m.start(), m.end()


# Earlier kinds win overlaps: an IBAN or card number also looks like a run of phone digits.
_DETECTORS = (_emails, _ibans, _cards, _ssns, _ninos, _ipv6s, _ipv4s, _phones, _streets)


_DIGITS = re.compile(r"\d+")
# Every kind but email holds a digit within 35 characters of its start (an IPv6 address's letter-only groups) and
# ends within ~70 after its last (a street's name words); the context rules look back at most 60. So the
# detectors scanned over the text within _PAD characters of its digits find exactly what they find over the whole
# text, and prose, mostly digit-free, is mostly skipped: the lookbehind-first patterns cost a match attempt at
# every character (benchmarks/data_pipeline.py measured the whole-text scan at 1.5 MB/s).
_PAD = 100


def _digit_windows(text: str) -> list[tuple[int, int]]:
    windows: list[list[int]] = []
    for m in _DIGITS.finditer(text):
        s, e = max(0, m.start() - _PAD), min(len(text), m.end() + _PAD)
        if windows and s <= windows[-1][1]:
            windows[-1][1] = e
        else:
            windows.append([s, e])
    return [(s, e) for s, e in windows]


def _scan(text: str, detectors, windows, kept: list | None = None) -> list[tuple[str, int, int]]:
    """Each detector over each (start, end) window of `text`, in order, added to `kept`; an earlier find wins
    an overlap."""
    kept = [] if kept is None else kept
    for ws, we in windows:
        window = text[ws:we]
        for detect in detectors:
            for kind, s, e in detect(window):
                s, e = s + ws, e + ws
                if all(e <= ks or s >= ke for _, ks, ke in kept):
                    kept.append((kind, s, e))
    return kept


def find_sensitive(text: str) -> list[Finding]:
    """Sensitive spans in `text`, in order of position, no two overlapping."""
    kept = _scan(text, _DETECTORS[:1], [(0, len(text))]) if "@" in text else []  # emails first: they win overlaps
    kept = _scan(text, _DETECTORS[1:], _digit_windows(text), kept)
    return [Finding(kind, text[s:e], s, e) for kind, s, e in sorted(kept, key=lambda f: f[1])]


def _find_sensitive_whole(text: str) -> list[Finding]:
    """find_sensitive without the digit windows: the reference its tests compare with."""
    kept = _scan(text, _DETECTORS, [(0, len(text))])
    return [Finding(kind, text[s:e], s, e) for kind, s, e in sorted(kept, key=lambda f: f[1])]


# One tag per kind, as StarCoder's PII redaction (Li et al. 2023) replaces names, emails, keys and passwords with
# <NAME>, <EMAIL>, <KEY>, <PASSWORD>. (StarCoder swaps IP addresses for synthetic private ones instead; a tag
# cannot be mistaken for a real address, and says what was there.)
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE_NUMBER>",
    "credit_card": "<CREDIT_CARD>",
    "iban": "<IBAN>",
    "us_ssn": "<US_SSN>",
    "uk_nino": "<UK_NINO>",
    "ipv4": "<IP_ADDRESS>",
    "ipv6": "<IP_ADDRESS>",
    "street_address": "<STREET_ADDRESS>",
}


def redact(text: str, kinds: Collection[str] | None = None) -> tuple[str, list[Finding]]:
    """(`text` with every finding of `kinds` (default: all) replaced by its PLACEHOLDERS tag, the findings with
    their offsets into the original text). Every kind is detected and then filtered, so an IBAN is never
    redacted as the phone number its digits also resemble."""
    if kinds is not None:
        unknown = set(kinds) - PLACEHOLDERS.keys()
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; valid: {', '.join(PLACEHOLDERS)}")
    found = [f for f in find_sensitive(text) if kinds is None or f.kind in kinds]
    parts, pos = [], 0
    for f in found:  # in order, never overlapping
        parts += [text[pos : f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
    return "".join(parts) + text[pos:], found
