"""The personal-data detector: each kind found in context with exact offsets, and hard negatives (dates,
versions, prices, look-alike numbers that fail their check digits or issuing rules) that must not fire;
redaction replaces exactly the real findings, by kind, with the right tags."""

import random

import pytest

from opengemma.data.pii import PLACEHOLDERS, _find_sensitive_whole, find_sensitive, iban_valid, luhn_valid, redact

POSITIVES = [
    ("email", "john.doe+tag@mail.example.co.uk"),
    ("email", "a_b@example.org"),
    ("phone", "(415) 555-2671"),
    ("phone", "415-555-2671"),
    ("phone", "415.555.2671"),
    ("phone", "+1 415 555 2671"),
    ("phone", "+1 (415) 555-2671"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "+44 (0)20 7946 0958"),
    ("phone", "020 7946 0958"),
    ("phone", "01632 960001"),
    ("phone", "07700 900123"),
    ("phone", "+33 1 23 45 67 89"),
    ("phone", "+4930123456"),
    ("credit_card", "4111 1111 1111 1111"),  # Visa test number
    ("credit_card", "4111-1111-1111-1111"),
    ("credit_card", "5555555555554444"),  # Mastercard
    ("credit_card", "378282246310005"),  # Amex, 15 digits
    ("credit_card", "3782 822463 10005"),  # Amex grouping 4-6-5
    ("credit_card", "6011111111111117"),  # Discover
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "DE89370400440532013000"),
    ("us_ssn", "123-45-6789"),
    ("us_ssn", "078 05 1120"),
    ("uk_nino", "AB 12 34 56 C"),
    ("uk_nino", "JG103759A"),
    ("ipv4", "192.168.1.10"),
    ("ipv4", "8.8.8.8"),
    ("ipv6", "2001:db8::8a2e:370:7334"),
    ("ipv6", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("ipv6", "fe80::1"),
    ("ipv6", "::ffff:192.0.2.128"),
    ("street_address", "221B Baker Street"),
    ("street_address", "10 Downing Street"),
    ("street_address", "1600 Pennsylvania Avenue"),
    ("street_address", "350 5th Ave."),
    ("street_address", "12 Main St."),
    ("street_address", "742 Evergreen Terrace"),
]


@pytest.mark.parametrize("kind, value", POSITIVES)
def test_found_in_a_sentence_with_exact_offsets(kind, value):
    text = f"For the record: {value}. Thanks"
    found = find_sensitive(text)
    assert [(f.kind, f.text) for f in found] == [(kind, value)]
    assert text[found[0].start : found[0].end] == value


NEGATIVES = [
    "On 2023-10-15 at 10:30:45 the meeting began.",
    "Dates: 12/25/2023, 25.12.2023, 1990-2000, 15 March 2024.",
    "In 1999, 2000 and 2001 the street was busy.",
    "Upgrade to version 1.2.3.4, v2.0.1.3 or build 10.0.19041.1 (release 1.5.2).",
    "It cost $1,234.56, was $12,000.00, or EUR 1.299,00.",
    "Pi is 3.14159265358979 and e is 2.718281828.",
    "ISBN 978-0-306-40615-7; timestamp 1700000000000; order 1234 5678 9012 3456.",
    "A Visa-like number failing Luhn: 4111 1111 1111 1112.",
    "Scores +5 to 3, +100 points, temperature -12.5.",
    "Never issued SSNs: 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000.",
    "Mixed separators 123-45 6789 and bare 123456789.",
    "Not NI numbers: QQ 12 34 56 C (Q prefix), GB 12 34 56 A (reserved), AB 12 34 56 E.",
    "Not IPs: 256.1.1.1, 1.2.3.4.5, 01.02.03.04, 10.0.0.",
    "Intro\n1.1.2.1 PEP 657: Fine-grained error locations\n.........\n\n1.21.70.4 IDLE\n==============\n",  # headings
    "Code: std::vector, a::b, dead::beef, ::, 12:30.",
    "Short numbers: call 555-1234, extension 4412, room 101, 123-456-789.",
    "Not emails: user@localhost, foo@bar.1, @handle, a..b@example.com.",
    "Act 2, Scene 1. Enter 3 Lords. Henry 4, Part 1. In 1066 the battle.",
    "Chapter 3 of the Lane report, page 10 of the Street guide.",
    "A wrong IBAN: GB82 WEST 1234 5698 7654 33.",
    "Mac address 00:1a:2b:3c:4d:5e, ratio 16:9.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_hard_negatives_do_not_fire(text):
    assert find_sensitive(text) == []


def test_validators():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")
    assert iban_valid("FR1420041010050500013M02606")


def test_many_kinds_in_one_text_are_ordered_and_do_not_overlap():
    text = (
        "Write to jane@example.com or +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, server 10.0.0.1, home 221B Baker Street."
    )
    found = find_sensitive(text)
    assert [f.kind for f in found] == ["email", "phone", "credit_card", "iban", "ipv4", "street_address"]
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    assert all(text[f.start : f.end] == f.text for f in found)


def test_plain_prose_is_clean():
    prose = (
        "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
        "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles."
    )
    assert find_sensitive(prose) == [] and find_sensitive("") == []


# -- redaction ---------------------------------------------------------------------------------------------
MIXED = (
    "Mail jane.doe@example.com or call (415) 555-2671 from 192.168.1.10; card 4111 1111 1111 1111 "
    "(not 4111 1111 1111 1112), version 1.2.3.4, on 2023-10-15."
)


def test_every_kind_has_a_placeholder():
    assert set(PLACEHOLDERS) == {kind for kind, _ in POSITIVES}
    assert PLACEHOLDERS["email"] == "<EMAIL>" and PLACEHOLDERS["ipv4"] == PLACEHOLDERS["ipv6"] == "<IP_ADDRESS>"


def test_redact_replaces_only_the_real_ones():
    text, found = redact(MIXED)
    assert text == (
        "Mail <EMAIL> or call <PHONE_NUMBER> from <IP_ADDRESS>; card <CREDIT_CARD> "
        "(not 4111 1111 1111 1112), version 1.2.3.4, on 2023-10-15."
    )
    # offsets into the original text, counted by hand
    assert [(f.kind, f.text, f.start, f.end) for f in found] == [
        ("email", "jane.doe@example.com", 5, 25),
        ("phone", "(415) 555-2671", 34, 48),
        ("ipv4", "192.168.1.10", 54, 66),
        ("credit_card", "4111 1111 1111 1111", 73, 92),
    ]


def test_redact_kinds_filter():
    text, found = redact(MIXED, kinds={"email", "ipv4"})
    assert text == (
        "Mail <EMAIL> or call (415) 555-2671 from <IP_ADDRESS>; card 4111 1111 1111 1111 "
        "(not 4111 1111 1111 1112), version 1.2.3.4, on 2023-10-15."
    )
    assert [f.kind for f in found] == ["email", "ipv4"]
    assert redact(MIXED, kinds=[]) == (MIXED, [])
    # an IBAN's digits never get redacted as a phone number: the IBAN wins the overlap, then is filtered out
    iban = "Pay DE89 3704 0044 0532 0130 00 now."
    assert redact(iban, kinds=["phone"]) == (iban, [])
    assert redact(iban)[0] == "Pay <IBAN> now."
    with pytest.raises(ValueError, match="unknown PII kinds \\['mail'\\]; valid: email, phone"):
        redact(MIXED, kinds=["mail"])


def test_redact_clean_text_is_unchanged():
    prose = "Version 2.0.1.3 shipped on 25.12.2023 for $1,234.56."
    assert redact(prose) == (prose, [])


def test_addresses_heading_log_lines_are_found_and_underlined_section_numbers_are_not():
    log = "127.0.0.1 GET /index.html\n10.1.2.3 POST /login\n  8.8.8.8 resolver\n"
    assert [f.text for f in find_sensitive(log)] == ["127.0.0.1", "10.1.2.3", "8.8.8.8"]
    manual = "1.21.70.4 IDLE\n==============\n\n5.18.1.87 Base Protocols\n........\n"
    assert find_sensitive(manual) == []


def test_scanning_near_digits_only_finds_what_a_whole_text_scan_finds():
    # find_sensitive scans the text within 100 characters of its digits; _find_sensitive_whole scans everything
    rng = random.Random(0)
    values = [v for _, v in POSITIVES] + NEGATIVES + [MIXED]
    filler = "the quick brown fox jumps over a lazy dog near 221B Baker Street; see ::1 and fe80::1. " * 3
    for _ in range(200):
        pieces = rng.sample(values, 3) + [filler[: rng.randrange(len(filler))]]
        rng.shuffle(pieces)
        text = (" " * rng.randrange(1, 150)).join(pieces)
        assert find_sensitive(text) == _find_sensitive_whole(text), text
