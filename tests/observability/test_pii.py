"""The PII rules shared by the log pipeline and log-scanning tests."""

import pytest

from app.observability.pii import (
    REDACTED,
    KeyKind,
    classify_key,
    find_pii,
    is_msisdn,
    mask_phone,
    mask_text,
    redact,
)


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("4712345678", "********78"),
        ("+4712345678", "********78"),
        ("4512345678", "********78"),
        ("358401234567", "**********67"),
        (4712345678, "********78"),
        ("+47 123 45 678", "********78"),
        ("1234", "**34"),
        ("123", "***"),
        ("", ""),
        ("not a number", REDACTED),
    ],
)
def test_mask_phone_shows_at_most_the_last_two_digits(raw, masked):
    assert mask_phone(raw) == masked


def test_redact_keeps_neither_prefix_nor_length():
    assert redact("eyJhbGciOiJIUzI1NiJ9.payload.sig") == REDACTED
    assert redact("x") == REDACTED
    assert redact(12345) == REDACTED


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4712345678", "********78"),  # Norway, the Vipps wire format
        ("4512345678", "********78"),  # Denmark
        ("358401234567", "**********67"),  # Finland, 12 digits
        ("3584012345", "********45"),  # Finland, 10 digits
        ("3584012345678", "***********78"),  # Finland, 13 digits
        ("+4712345678", "********78"),
        ("+46701234567", "*********67"),  # any country with a plus
        ("+47 123 45 678", "********78"),
        ("+47-123-45-678", "********78"),
        ("004712345678", "**********78"),
        ("customer 4712345678 scanned", "customer ********78 scanned"),
        ('{"phone": "4712345678"}', '{"phone": "********78"}'),
        ("msisdn=4712345678&x=1", "msisdn=********78&x=1"),
        ("tel:+4712345678.", "tel:********78."),
    ],
)
def test_phone_numbers_are_found_and_masked(text, masked):
    assert len(find_pii(text)) == 1
    assert mask_text(text) == masked
    assert find_pii(masked) == []


@pytest.mark.parametrize(
    "text",
    [
        "1732712345678",  # epoch milliseconds
        "1732712345",  # epoch seconds
        "1732712345678901",  # epoch microseconds
        "s123-pos2-0042",  # checkout reference
        "0.4712345678",  # fractional part of a float
        "duration=12.4712345678",
        "sha256=ab4712345678cd",  # digits inside a hex digest
        "abc4712345678",
        "4712345678901234",  # 16 digits: longer than any MSISDN
        "47123456789",  # 47 + 9 digits is not a Norwegian number
        "12345678",  # national number without country code: out of scope
        "amount=47123",
        "550e8400-e29b-41d4-a716-446655440000",
        "Basic authentication failed",
        "Bearer token missing",
    ],
)
def test_ordinary_values_are_not_taken_for_pii(text):
    assert find_pii(text) == []
    assert mask_text(text) == text


def test_mask_text_is_idempotent():
    text = "from +4712345678 to 4512345678, Authorization: Bearer eyJ0eXAi.eyJzdWIi.c2ln"
    once = mask_text(text)
    assert mask_text(once) == once
    assert once == "from ********78 to ********78, Authorization: Bearer [redacted]"


def test_bearer_and_basic_credentials_in_text_are_found():
    assert find_pii("Authorization: Bearer eyJ0eXAiOiJKV1Qi.eyJzdWIi.sig") == [
        "Bearer credential at 15"
    ]
    assert find_pii("Basic dXNlcjpwYXNzd29yZA==") == ["Basic credential at 0"]


def test_known_secrets_are_found_raw_json_escaped_and_url_encoded():
    token = 'tok/en+with"quote'
    assert find_pii(f"x {token} y", known_secrets=[token]) == ["known secret #0 at 2"]
    assert find_pii('{"t": "tok/en+with\\"quote"}', known_secrets=[token]) == [
        "known secret #0 at 7"
    ]
    assert find_pii("?t=tok%2Fen%2Bwith%22quote", known_secrets=[token]) == ["known secret #0 at 3"]


def test_known_secrets_report_every_occurrence_without_echoing_them():
    secret = "s3cr3t-value"
    findings = find_pii(f"{secret} and {secret}", known_secrets=["", secret])
    assert findings == ["known secret #1 at 0", "known secret #1 at 17"]
    assert all(secret not in finding for finding in findings)


def test_findings_never_repeat_the_phone_number():
    assert find_pii("call 4712345678") == ["phone number ********78 at 5"]


def test_too_short_known_secret_is_rejected():
    with pytest.raises(ValueError, match="shorter than 6"):
        find_pii("anything", known_secrets=["abc"])


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("phone", KeyKind.PHONE),
        ("msisdn", KeyKind.PHONE),
        ("phone_number", KeyKind.PHONE),
        ("phoneNumber", KeyKind.PHONE),
        ("customer_phone", KeyKind.PHONE),
        ("customer_token", KeyKind.CREDENTIAL),
        ("customerToken", KeyKind.CREDENTIAL),
        ("token", KeyKind.CREDENTIAL),
        ("access_token", KeyKind.CREDENTIAL),
        ("secret", KeyKind.CREDENTIAL),
        ("client_secret", KeyKind.CREDENTIAL),
        ("webhook_secret", KeyKind.CREDENTIAL),
        ("Authorization", KeyKind.CREDENTIAL),
        ("api_key", KeyKind.CREDENTIAL),
        ("x-api-key", KeyKind.CREDENTIAL),
        ("Ocp-Apim-Subscription-Key", KeyKind.CREDENTIAL),
        ("password", KeyKind.CREDENTIAL),
        ("client_id", KeyKind.CREDENTIAL),
        ("token_expires_at", None),
        ("checkout_id", None),
        ("reference", None),
        ("event", None),
        (3, None),
    ],
)
def test_classify_key(key, kind):
    assert classify_key(key) is kind


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4712345678", True), ("+4712345678", True), ("1732712345678", False), ("47", False)],
)
def test_is_msisdn_matches_whole_values_only(value, expected):
    assert is_msisdn(value) is expected
