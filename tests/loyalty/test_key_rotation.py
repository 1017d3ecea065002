"""``vipps-pos encryption-keys rotate``: after ``ENCRYPTION_KEY="NEW,OLD"`` everything moves
to NEW, members registered twice across an earlier rotation are merged, and the old key can then
be dropped.

The CLI runs its own event loop, as for an operator; the database is prepared (and read) in
loops of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from app.cli import cli
from app.crypto import DecryptionFailed, SecretBox
from app.db import create_engine, create_session_factory
from app.loyalty.members import DatabaseMemberDirectory, NewMember
from app.models import Member, WebhookRegistration
from app.settings import DatabaseSettings

OLD = "0S9uG8rK4Jmy0-yb7gGi5XJjKb6Y6zUJrPz3DgH5zC4="
NEW = "q2Rk8rbN9Y7l1QkzJwXq1e3bKx6m4a0vC8dT5fH2sUg="
OLA, KARI = "4712345678", "4798765432"
T = TypeVar("T")


def _in_db(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(DatabaseSettings(url=url))
        try:
            async with create_session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _directory_call(url: str, keys: str, call: Callable[[DatabaseMemberDirectory], Any]) -> Any:
    async def main() -> Any:
        engine = create_engine(DatabaseSettings(url=url))
        try:
            directory = DatabaseMemberDirectory(
                create_session_factory(engine), SecretBox(SecretStr(keys))
            )
            return await call(directory)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _rotate(url: str, keys: str, expect: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    env |= {"VIPPS_POS_DATABASE__URL": url, "VIPPS_POS_SECURITY__ENCRYPTION_KEY": keys}
    result = CliRunner().invoke(cli, ["encryption-keys", "rotate", "--json"], env=env)
    assert result.exit_code == expect, (result.output, result.stderr)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_keys_rotate_moves_everything_to_the_new_key_and_merges_duplicate_members(
    database_url: str,
) -> None:
    old = SecretBox(SecretStr(OLD))
    first_enrolled = datetime.now(UTC) - timedelta(days=30)

    async def earlier_versions(session: AsyncSession) -> None:
        """What a rotation with the old code left: Ola enrolled under OLD, then (lookups under
        NEW only) enrolled again under NEW; Kari, under OLD, never seen since; a webhook secret
        under OLD."""
        new = SecretBox(SecretStr(f"{NEW},{OLD}"))
        session.add_all(
            [
                Member(
                    id="m-first",
                    phone_hash=old.lookup_hash(OLA),
                    phone_enc=old.encrypt(OLA),
                    vipps_sub=None,
                    name="Ola",
                    store_id="s1",
                    enrolled_at=first_enrolled,
                ),
                Member(
                    id="m-again",
                    phone_hash=new.lookup_hash(OLA),
                    phone_enc=new.encrypt(OLA),
                    vipps_sub="sub-ola",
                    name=None,
                    store_id=None,
                    enrolled_at=first_enrolled + timedelta(days=10),
                ),
                Member(
                    id="m-kari",
                    phone_hash=old.lookup_hash(KARI),
                    phone_enc=old.encrypt(KARI),
                    vipps_sub=None,
                    name="Kari",
                    store_id=None,
                    enrolled_at=first_enrolled,
                ),
                WebhookRegistration(
                    id="reg-1",
                    msn="123456",
                    url="https://pos.test/webhooks/vipps/123456",
                    events=["user.checked-in.v1"],
                    secret_enc=old.encrypt("webhook-secret"),
                    status="ACTIVE",
                    created_at=first_enrolled,
                ),
            ]
        )

    _in_db(database_url, earlier_versions)

    report = _rotate(database_url, f"{NEW},{OLD}", expect=0)
    assert report["membersMerged"] == 1
    assert report["membersRehashed"] == 2  # the first Ola row and Kari
    assert report["reencrypted"]["webhook_registrations.secret_enc"] == 1
    assert report["clean"] is True

    async def stored(session: AsyncSession) -> tuple[list[Member], str]:
        members = list((await session.scalars(select(Member).order_by(Member.id))).all())
        registration = await session.get(WebhookRegistration, "reg-1")
        assert registration is not None
        return members, registration.secret_enc

    members, secret_enc = _in_db(database_url, stored)
    new_only = SecretBox(SecretStr(NEW))
    # One Ola: the row enrolled first, with the Vipps sub only the second knew.
    assert [(m.id, m.vipps_sub, m.name, m.store_id) for m in members] == [
        ("m-first", "sub-ola", "Ola", "s1"),
        ("m-kari", None, "Kari", None),
    ]
    for member, phone in zip(members, (OLA, KARI), strict=True):
        assert member.phone_hash == new_only.lookup_hash(phone)
        assert new_only.decrypt(member.phone_enc) == phone
    assert new_only.decrypt(secret_enc) == "webhook-secret"

    # OLD can go: with NEW alone every member is found, and nobody joins twice.
    found = _directory_call(database_url, NEW, lambda d: d.find_by_phone(KARI))
    assert found is not None
    assert found.id == "m-kari"
    joined = _directory_call(
        database_url,
        NEW,
        lambda d: d.enroll(NewMember(OLA, "sub-ola", "Ola", None, None)),
    )
    assert joined.id == "m-first"

    # Running it again changes nothing but the ciphertexts.
    again = _rotate(database_url, NEW, expect=0)
    assert (again["membersMerged"], again["membersRehashed"]) == (0, 0)


def test_keys_rotate_fails_while_something_opens_with_no_configured_key(
    database_url: str,
) -> None:
    async def forgotten_key(session: AsyncSession) -> None:
        session.add(
            Member(
                id="m-lost",
                phone_hash="0" * 64,
                phone_enc=SecretBox(SecretStr(OLD)).encrypt(OLA),
                vipps_sub=None,
                name=None,
                store_id=None,
                enrolled_at=datetime.now(UTC),
            )
        )

    _in_db(database_url, forgotten_key)
    report = _rotate(database_url, NEW, expect=1)  # OLD dropped too early
    assert report["unreadable"]["members.phone_enc"] == 1
    assert report["clean"] is False

    async def unchanged(session: AsyncSession) -> str:
        member = await session.get(Member, "m-lost")
        assert member is not None
        return member.phone_enc

    with pytest.raises(DecryptionFailed):  # left as it was, for the key that opens it
        SecretBox(SecretStr(NEW)).decrypt(_in_db(database_url, unchanged))
