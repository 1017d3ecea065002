"""`keys …` and the first contact from the command line, against the live service and simulator."""

from __future__ import annotations

import pytest

from tests.cli.conftest import LiveStack

pytestmark = pytest.mark.e2e

DKK_MSN = "654321"
DKK_KEYS = {
    "VIPPS_POS_KEYS_CLIENT_ID": "sim-client-id-654321",
    "VIPPS_POS_KEYS_CLIENT_SECRET": "sim-client-secret-654321",
    "VIPPS_POS_KEYS_SUBSCRIPTION_KEY": "sim-subscription-key-654321",
}


def test_a_till_needs_keys_for_its_msn_and_keys_add_rotate_list_remove(stack: LiveStack) -> None:
    refused = stack.run(
        "tills",
        "add",
        "kasse-9",
        "--store",
        "kbh-1",
        "--location",
        "Kasse 9",
        "--msn",
        DKK_MSN,
        expect=1,
    )
    assert "msn_not_covered" in refused.stderr
    assert f"vipps-pos keys add {DKK_MSN}" in refused.stderr

    with_keys = {**stack.env, **DKK_KEYS}
    original = stack.env
    stack.env = with_keys
    try:
        added = stack.run_json("keys", "add", DKK_MSN)
        assert (added["created"], added["verified"], added["source"]) == (True, True, "sales_unit")
        again = stack.run("keys", "add", DKK_MSN, expect=1)
        assert "vipps_keys_exist" in again.stderr
        rotated = stack.run_json("keys", "rotate", DKK_MSN)
        assert rotated["created"] is False
        assert rotated["rotatedAt"] is not None
        # Keys of another sales unit are refused by Vipps and not stored.
        foreign = {
            **stack.env,
            "VIPPS_POS_KEYS_CLIENT_ID": "sim-client-id",
            "VIPPS_POS_KEYS_CLIENT_SECRET": "sim-client-secret",
            "VIPPS_POS_KEYS_SUBSCRIPTION_KEY": "sim-subscription-key",
        }
        stack.env = foreign
        assert "vipps_keys_rejected" in stack.run("keys", "rotate", DKK_MSN, expect=1).stderr
    finally:
        stack.env = original

    listing = stack.run("keys", "list", "--json")
    for secret in DKK_KEYS.values():
        assert secret not in listing.stdout
    assert [(k["msn"], k["source"]) for k in stack.run_json("keys", "list")] == [
        ("123456", "configured"),
        (DKK_MSN, "sales_unit"),
    ]

    till = stack.run_json(
        "tills", "add", "kasse-9", "--store", "kbh-1", "--location", "Kasse 9", "--msn", DKK_MSN
    )
    assert till["qrStatus"] == "SYNCED"
    assert "vipps_keys_in_use" in stack.run("keys", "remove", DKK_MSN, expect=1).stderr
    stack.run("tills", "deactivate", "kasse-9")
    assert stack.run_json("keys", "remove", DKK_MSN) == {"msn": DKK_MSN, "removed": True}


def test_webhooks_ensure_names_the_setting_when_vipps_refuses_the_url(stack: LiveStack) -> None:
    original = stack.env
    stack.env = {**original, "VIPPS_POS_WEBHOOKS__PUBLIC_URL": "http://pos.example.com/hooks"}
    try:
        refused = stack.run("webhooks", "ensure", "--msn", "123456", expect=1)
    finally:
        stack.env = original
    assert "webhook_url_refused" in refused.stderr
    assert "VIPPS_POS_WEBHOOKS__PUBLIC_URL" in refused.stderr
