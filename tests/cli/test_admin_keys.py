"""`admin-keys …` against the live service and Postgres: a named key works within its roles,
and once revoked by the CLI the running service refuses it."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.cli.conftest import LiveStack

pytestmark = pytest.mark.e2e


def test_admin_keys_create_list_and_revoke_reach_the_running_service(stack: LiveStack) -> None:
    created = stack.run_json("admin-keys", "create", "ops-anna", "--role", "operator")
    assert created["name"] == "ops-anna"
    assert created["roles"] == ["operator"]
    key = created["key"]
    assert key.startswith(f"vpa_{created['keyId']}_")
    listed = stack.run_json("admin-keys", "list")
    assert [k["name"] for k in listed] == ["ops-anna"]
    assert "key" not in listed[0]  # shown once, at creation
    duplicate = stack.run("admin-keys", "create", "ops-anna", "--role", "money", expect=1)
    assert "admin_key_exists" in duplicate.stderr
    unknown_role = stack.run("admin-keys", "create", "x", "--role", "root", expect=1)
    assert "unknown role" in unknown_role.stderr

    with httpx.Client(base_url=stack.service.url, timeout=30) as api:
        headers = {"Authorization": f"Bearer {key}"}
        assert api.get("/api/v1/tills", headers=headers).status_code == 200
        registered = api.post(
            "/api/v1/tills",
            json={"tillId": "k-1", "storeId": "s-1", "locationDescription": "Kasse 1"},
            headers=headers,
        )
        assert registered.status_code == 201, registered.text
        trail = stack.run_json("checkouts", "list")  # operators may list checkouts
        assert trail == []

        revoked = stack.run_json("admin-keys", "revoke", "ops-anna")
        assert revoked["revokedAt"] is not None
        deadline = time.monotonic() + 10
        status = 200
        while status != 401 and time.monotonic() < deadline:
            status = api.get("/api/v1/tills", headers=headers).status_code
            time.sleep(0.1)
        assert status == 401
    assert stack.run_json("admin-keys", "list") == []
    assert [k["name"] for k in stack.run_json("admin-keys", "list", "--all")] == ["ops-anna"]
    stack.run("admin-keys", "revoke", "ops-anna", expect=1)
