"""Webhook HMAC signatures: the documented test vector and every way a delivery must fail."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.vipps.signature import (
    WebhookSignatureError,
    content_hash,
    format_ms_date,
    sign_webhook,
    verify_webhook,
)

# REFERENCE.md §6.3: the docs' sample values, recomputed and matching.
SECRET = "A0+AeKBRG2KRGvnNwJpQlb6IJFk48CKXCIcrLoHncVJKDILsQSxS6NWCccwWm6r6FhGKhiHTBsG2wo/xU6FY/A=="
PATH = "/e2cee29b-012e-4f1d-8ef4-e95fd74a7a63"
HOST = "webhook.site"
BODY = b'{"some-unique-content":"ee6e441b-cc4a-46f8-895d-a5af79bcc233/hello-world"}'
MS_DATE = "Thu, 30 Mar 2023 08:38:32 GMT"
EXPECTED_HASH = "lNlsp1XA03N34HrQsVzPgJKtC+r7l/RBF4V3JQUWMj4="
EXPECTED_SIGNATURE = "agAiSyogQbDHpeucoNwYz+yAr5nJ+v+zasdkSbqzv+U="
SENT_AT = datetime(2023, 3, 30, 8, 38, 32, tzinfo=UTC)
MAX_AGE = timedelta(minutes=5)


def vector_headers() -> dict[str, str]:
    return {
        "x-ms-date": MS_DATE,
        "x-ms-content-sha256": EXPECTED_HASH,
        "Authorization": (
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
            f"&Signature={EXPECTED_SIGNATURE}"
        ),
        "Host": HOST,
    }


def verify(
    *,
    secrets: tuple[str, ...] = (SECRET,),
    path: str = PATH,
    host: str = HOST,
    headers: dict[str, str] | None = None,
    body: bytes = BODY,
    now: datetime = SENT_AT,
) -> str:
    return verify_webhook(
        secrets,
        path_and_query=path,
        host=host,
        headers=vector_headers() if headers is None else headers,
        body=body,
        now=now,
        max_age=MAX_AGE,
    )


def test_content_hash_matches_the_documented_vector() -> None:
    assert content_hash(BODY) == EXPECTED_HASH


def test_signing_reproduces_the_documented_headers() -> None:
    headers = sign_webhook(SECRET, path_and_query=PATH, host=HOST, body=BODY, ms_date=MS_DATE)
    assert headers == vector_headers()


def test_documented_delivery_verifies_and_names_its_secret() -> None:
    assert verify() == SECRET


def test_format_ms_date_matches_what_vipps_sends() -> None:
    assert format_ms_date(SENT_AT) == MS_DATE
    oslo_summer = timezone(timedelta(hours=2))
    assert format_ms_date(SENT_AT.astimezone(oslo_summer)) == MS_DATE


def test_header_names_are_case_insensitive() -> None:
    upper = {key.upper(): value for key, value in vector_headers().items()}
    assert verify(headers=upper) == SECRET


def test_rotation_overlap_accepts_either_secret() -> None:
    assert verify(secrets=("an-older-secret", SECRET)) == SECRET


def test_tampered_body_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="body does not match"):
        verify(body=BODY.replace(b"hello", b"HELLO"))


def test_tampered_body_with_matching_hash_header_is_rejected() -> None:
    tampered = BODY + b" "
    headers = {**vector_headers(), "x-ms-content-sha256": content_hash(tampered)}
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(headers=headers, body=tampered)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(secrets=("not-the-secret",))


def test_secret_is_used_as_text_not_base64_decoded() -> None:
    # REFERENCE.md §6.3: the key is the UTF-8 bytes of the secret as returned, even though it
    # looks like base64. Signing with the decoded bytes must not verify.
    decoded = base64.b64decode(SECRET).decode("latin-1")
    with pytest.raises(WebhookSignatureError):
        verify(secrets=(decoded,))


def test_no_secret_at_all_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(secrets=())


def test_wrong_path_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(path="/webhooks/vipps")


def test_query_string_is_part_of_the_signed_path() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(path=PATH + "?msn=123456")


def test_wrong_host_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(host="pos.example.com")


def test_host_with_port_must_match_exactly() -> None:
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(host=HOST + ":443")


def test_stale_date_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="outside the accepted window"):
        verify(now=SENT_AT + MAX_AGE + timedelta(seconds=1))


def test_date_at_the_edge_of_the_window_is_accepted() -> None:
    assert verify(now=SENT_AT + MAX_AGE) == SECRET
    assert verify(now=SENT_AT - MAX_AGE) == SECRET


def test_future_date_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="outside the accepted window"):
        verify(now=SENT_AT - MAX_AGE - timedelta(seconds=1))


@pytest.mark.parametrize("missing", ["x-ms-date", "x-ms-content-sha256", "Authorization"])
def test_missing_header_is_rejected(missing: str) -> None:
    headers = {k: v for k, v in vector_headers().items() if k != missing}
    with pytest.raises(WebhookSignatureError, match="missing signature headers"):
        verify(headers=headers)


@pytest.mark.parametrize("missing", ["x-ms-date", "x-ms-content-sha256", "Authorization"])
def test_empty_header_is_rejected(missing: str) -> None:
    headers = {**vector_headers(), missing: ""}
    with pytest.raises(WebhookSignatureError, match="missing signature headers"):
        verify(headers=headers)


def test_unparseable_date_is_rejected() -> None:
    with pytest.raises(WebhookSignatureError, match="x-ms-date"):
        verify(headers={**vector_headers(), "x-ms-date": "yesterday"})


def test_date_without_time_zone_is_rejected() -> None:
    # "-0000" means "time zone unknown" in RFC 2822: the date cannot be compared safely.
    headers = {**vector_headers(), "x-ms-date": "Thu, 30 Mar 2023 08:38:32 -0000"}
    with pytest.raises(WebhookSignatureError, match="without time zone"):
        verify(headers=headers)


def test_signature_with_other_signed_headers_prefix_is_rejected() -> None:
    headers = {
        **vector_headers(),
        "Authorization": f"HMAC-SHA256 SignedHeaders=host&Signature={EXPECTED_SIGNATURE}",
    }
    with pytest.raises(WebhookSignatureError, match="signature mismatch"):
        verify(headers=headers)


def test_error_reason_never_contains_the_secret() -> None:
    with pytest.raises(WebhookSignatureError) as caught:
        verify(secrets=("not-the-secret",))
    assert SECRET not in str(caught.value)
    assert "not-the-secret" not in caught.value.reason


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=64))
def test_any_signed_body_verifies_and_any_changed_byte_fails(body: bytes, secret: str) -> None:
    headers = sign_webhook(secret, path_and_query=PATH, host=HOST, body=body, ms_date=MS_DATE)
    assert (
        verify_webhook(
            [secret],
            path_and_query=PATH,
            host=HOST,
            headers=headers,
            body=body,
            now=SENT_AT,
            max_age=MAX_AGE,
        )
        == secret
    )
    changed = body + b"\x00" if not body else bytes([body[0] ^ 0x01]) + body[1:]
    with pytest.raises(WebhookSignatureError):
        verify_webhook(
            [secret],
            path_and_query=PATH,
            host=HOST,
            headers=headers,
            body=changed,
            now=SENT_AT,
            max_age=MAX_AGE,
        )
