"""Member directories: our members table, and a chain's loyalty system over HTTP (at the wire)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from pydantic import SecretStr
from sqlalchemy import select

from app.crypto import SecretBox
from app.db import create_engine, create_session_factory
from app.loyalty.members import (
    DatabaseMemberDirectory,
    HttpMemberDirectory,
    MemberDirectoryUnavailable,
    MemberRecord,
    NewMember,
    build_directory,
)
from app.models import Member
from app.settings import ClubSettings, DatabaseSettings, SecuritySettings

PHONE = "4712345678"
LOYALTY = "https://loyalty.example.com/api"


@pytest.fixture
async def directory(database_url: str) -> AsyncIterator[DatabaseMemberDirectory]:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        yield DatabaseMemberDirectory(
            create_session_factory(engine), SecretBox(SecuritySettings().encryption_key)
        )
    finally:
        await engine.dispose()


def _joiner(sub: str = "sub-1", phone: str = PHONE) -> NewMember:
    return NewMember(msisdn=phone, vipps_sub=sub, name="Ola Nordmann", email=None, store_id="s1")


async def test_a_member_is_found_by_phone_and_the_number_is_not_stored_in_clear(
    directory: DatabaseMemberDirectory,
) -> None:
    assert await directory.find_by_phone(PHONE) is None
    member = await directory.enroll(_joiner())
    assert await directory.find_by_phone(PHONE) == member
    async with directory._sessions() as session:
        row = (await session.scalars(select(Member))).one()
    assert PHONE not in row.phone_hash
    assert PHONE not in row.phone_enc
    assert row.vipps_sub == "sub-1"


async def test_enrolling_twice_gives_one_member(directory: DatabaseMemberDirectory) -> None:
    first, second = await asyncio.gather(directory.enroll(_joiner()), directory.enroll(_joiner()))
    assert first.id == second.id
    async with directory._sessions() as session:
        assert len((await session.scalars(select(Member))).all()) == 1


async def test_enrollment_links_a_member_registered_without_login(
    directory: DatabaseMemberDirectory,
) -> None:
    added, created = await directory.add(PHONE, name="Ola", store_id=None)
    assert created
    assert (await directory.add(PHONE, name="Other", store_id=None)) == (added, False)
    enrolled = await directory.enroll(_joiner())
    assert enrolled == MemberRecord(added.id, "Ola")
    row = await directory.get(added.id)
    assert row is not None
    assert row.vipps_sub == "sub-1"


async def test_a_known_sub_with_a_new_number_follows_the_number(
    directory: DatabaseMemberDirectory,
) -> None:
    member = await directory.enroll(_joiner())
    assert await directory.enroll(_joiner(phone="4798765432")) == member
    assert await directory.find_by_phone(PHONE) is None
    assert await directory.find_by_phone("4798765432") == member


def test_new_member_repr_masks_the_phone_number() -> None:
    assert PHONE not in repr(_joiner())
    assert "********78" in repr(_joiner())


# ---- HTTP directory ---------------------------------------------------------------------------


@pytest.fixture
async def loyalty() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=LOYALTY, assert_all_called=True, assert_all_mocked=True) as m:
        yield m


@pytest.fixture
async def remote() -> AsyncIterator[HttpMemberDirectory]:
    directory = HttpMemberDirectory.create(
        ClubSettings(directory_url=LOYALTY + "/", directory_api_key=SecretStr("loyalty-key-123"))
    )
    try:
        yield directory
    finally:
        await directory.aclose()


async def test_http_lookup_sends_the_number_in_the_body_only(
    loyalty: respx.MockRouter, remote: HttpMemberDirectory
) -> None:
    route = loyalty.post("/members/search").respond(200, json={"memberId": "M-42", "name": "Ola"})
    assert await remote.find_by_phone(PHONE) == MemberRecord("M-42", "Ola")
    request = route.calls.last.request
    assert PHONE not in str(request.url)
    assert json.loads(request.content) == {"msisdn": PHONE}
    assert request.headers["Authorization"] == "Bearer loyalty-key-123"


async def test_http_lookup_404_means_not_a_member(
    loyalty: respx.MockRouter, remote: HttpMemberDirectory
) -> None:
    loyalty.post("/members/search").respond(404)
    assert await remote.find_by_phone(PHONE) is None


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500),
        httpx.Response(200, json={"name": "no id"}),
        httpx.Response(200, content=b"<html>"),
    ],
)
async def test_http_lookup_failures_raise_without_personal_data(
    loyalty: respx.MockRouter, remote: HttpMemberDirectory, response: httpx.Response
) -> None:
    loyalty.post("/members/search").mock(return_value=response)
    with pytest.raises(MemberDirectoryUnavailable) as caught:
        await remote.find_by_phone(PHONE)
    assert PHONE not in str(caught.value)


async def test_http_lookup_timeout_raises(
    loyalty: respx.MockRouter, remote: HttpMemberDirectory
) -> None:
    loyalty.post("/members/search").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(MemberDirectoryUnavailable, match="ReadTimeout"):
        await remote.find_by_phone(PHONE)


async def test_http_enroll_is_idempotent_per_sub(
    loyalty: respx.MockRouter, remote: HttpMemberDirectory
) -> None:
    route = loyalty.post("/members").respond(201, json={"memberId": "M-7"})
    assert await remote.enroll(_joiner("sub-xyz")) == MemberRecord("M-7", None)
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == "enroll-sub-xyz"
    assert json.loads(request.content) == {
        "msisdn": PHONE,
        "vippsSub": "sub-xyz",
        "name": "Ola Nordmann",
        "storeId": "s1",
    }


async def test_the_directory_follows_the_settings(sqlite_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=sqlite_url))
    sessions = create_session_factory(engine)
    box = SecretBox(SecuritySettings().encryption_key)
    assert isinstance(build_directory(ClubSettings(), sessions, box), DatabaseMemberDirectory)
    remote = build_directory(ClubSettings(directory_url=LOYALTY), sessions, box)
    assert isinstance(remote, HttpMemberDirectory)
    await remote.aclose()
    await engine.dispose()
