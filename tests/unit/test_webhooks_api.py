"""The webhook routes (``/v1/webhooks``) and ``csms webhook`` over real HTTP in front of the
embedded composition, with the dispatcher and workers delivering to a real receiver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Request, Response

from services.events import EventKind, MemoryEventLog, event_of, utc_now
from services.webhooks import TEST_EVENT_KIND
from tests.unit.test_api import ADMIN, Api, assert_error, embedded_api
from tests.unit.test_cli_api import _no_api_environment, _quiet_csms, in_process
from tests.unit.test_webhooks import SECRET, config, receiver, wait_for
from webhooks import WebhookRunner, verify_signature

__all__ = ["_no_api_environment", "_quiet_csms"]  # autouse fixtures of the CLI tests


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with embedded_api() as harness:
        yield harness


def new(url: str = "https://receiver.example/hook", **fields: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, **fields}


async def test_create_show_list_patch_delete_without_secrets(api: Api) -> None:
    auth = {
        "token_url": "https://idp.example/token",
        "client_id": "csms",
        "client_secret": "client-secret-value",
        "scope": "hooks:write",
    }
    created = await api.client.post(
        "/v1/webhooks",
        json=new(events=["transaction.ended"], station_ids=["CS1"], auth=auth, description="d"),
        headers=api.auth(),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert SECRET not in created.text and "client-secret-value" not in created.text
    assert body["events"] == ["transaction.ended"] and body["station_ids"] == ["CS1"]
    assert body["auth"] == {
        "token_url": "https://idp.example/token",
        "client_id": "csms",
        "scope": "hooks:write",
        "audience": None,
        "auth_method": "client_secret_basic",
    }
    hook = body["id"]
    stored = await api.services.webhooks.get(hook)
    assert stored is not None and stored.secret == SECRET
    assert stored.auth is not None and stored.auth.client_secret == "client-secret-value"

    shown = await api.client.get(f"/v1/webhooks/{hook}", headers=await api.key("read"))
    assert shown.status_code == 200 and shown.json() == body

    for _ in range(2):
        extra = await api.client.post("/v1/webhooks", json=new(), headers=api.auth())
        assert extra.status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/webhooks", params=params, headers=api.auth())).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 and hook in seen and SECRET not in json.dumps(page)

    patched = await api.client.patch(
        f"/v1/webhooks/{hook}",
        json={"events": ["*"], "station_ids": None, "auth": None, "active": False},
        headers=api.auth(),
    )
    assert patched.status_code == 200, patched.text
    changed = patched.json()
    assert (changed["events"], changed["station_ids"], changed["auth"], changed["active"]) == (
        ["*"],
        None,
        None,
        False,
    )
    assert changed["description"] == "d"  # untouched
    assert_error(
        await api.client.patch(f"/v1/webhooks/{hook}", json={"url": None}, headers=api.auth()),
        422,
        "invalid_request",
    )
    deleted = await api.client.delete(f"/v1/webhooks/{hook}", headers=api.auth())
    assert deleted.status_code == 204
    for method in ("GET", "DELETE"):
        answer = await api.client.request(method, f"/v1/webhooks/{hook}", headers=api.auth())
        assert_error(answer, 404, "webhook_not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (new("ftp://receiver.example/x"), "url"),
        (new("https://user:pw@receiver.example/"), "url"),
        (new(events=["no.such.kind"]), "events"),
        (new(events=[]), "events"),
        ({"url": "https://receiver.example/", "secret": "short"}, "secret"),
        (
            new(auth={"token_url": "file:///etc/passwd", "client_id": "a", "client_secret": "b"}),
            "auth.token_url",
        ),
        (new(unknown=1), "unknown"),
    ],
)
async def test_invalid_subscriptions_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    answer = await api.client.post("/v1/webhooks", json=body, headers=api.auth())
    details = assert_error(answer, 422, "invalid_request")["details"]
    assert details["field"] == field


async def test_writes_need_admin_and_reads_need_read(api: Api) -> None:
    operator = await api.key("operate")
    assert_error(
        await api.client.post("/v1/webhooks", json=new(), headers=operator), 403, "forbidden"
    )
    assert (await api.client.get("/v1/webhooks", headers=await api.key("read"))).status_code == 200
    assert_error(await api.client.get("/v1/webhooks"), 401, "unauthorized")
    assert_error(
        await api.client.get("/v1/webhooks/0123456789abcdef/deliveries", headers=operator),
        404,
        "webhook_not_found",
    )


async def test_deliveries_and_test_events_are_visible_through_the_api(api: Api) -> None:
    async def flaky(_request: Request, _body: bytes, n: int) -> Response:
        return Response(status_code=500 if n <= 2 else 200)

    events = MemoryEventLog()
    async with receiver(flaky) as (url, seen):
        created = await api.client.post(
            "/v1/webhooks", json=new(url, events=["transaction.ended"]), headers=api.auth()
        )
        hook = created.json()["id"]
        store = api.services.webhooks
        async with WebhookRunner(events, store, config()):
            ended = await events.append(
                event_of(EventKind.TRANSACTION_ENDED, utc_now(), "CS1", {"transaction_id": "1"})
            )

            async def listed() -> list[dict[str, Any]]:
                answer = await api.client.get(f"/v1/webhooks/{hook}/deliveries", headers=api.auth())
                assert answer.status_code == 200, answer.text
                items: list[dict[str, Any]] = answer.json()["items"]
                return items

            async def delivered_count(count: int) -> bool:
                states = [item["state"] for item in await listed()]
                return states.count("delivered") == count

            await wait_for(lambda: delivered_count(1))
            (first,) = await listed()
            assert first["event_id"] == ended.id and first["event_kind"] == "transaction.ended"
            assert (first["attempts"], first["last_status"], first["next_attempt_at"]) == (
                3,
                200,
                None,
            )
            assert first["delivered_at"] is not None and first["last_error"] is None

            queued = await api.client.post(f"/v1/webhooks/{hook}/test", headers=api.auth())
            assert queued.status_code == 202, queued.text
            test_id = queued.json()["event_id"]
            await wait_for(lambda: delivered_count(2))
            newest = (await listed())[0]
            assert newest["event_kind"] == TEST_EVENT_KIND and newest["event_id"] == test_id
    assert list(seen.events) == [ended.id, test_id]
    headers, body = seen.requests[-1]
    assert verify_signature(SECRET, headers["x-csms-signature"], body)
    assert json.loads(body)["data"] == {"subscription_id": hook}


async def test_csms_webhook_commands(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    run = in_process(capsys)
    flags = ["--api-url", api.url, "--api-key", ADMIN]
    added = await run(
        "webhook", "add", "https://receiver.example/hook", "--secret", SECRET,
        "--events", "transaction.started,transaction.ended", "--station", "CS1",
        "--station", "CS2", *flags,
    )  # fmt: skip
    assert added.code == 0, added.err
    hook = added.out.strip()
    assert hook, added
    stored = await api.services.webhooks.get(hook)
    assert stored is not None and stored.events == ("transaction.started", "transaction.ended")
    assert stored.station_ids == ("CS1", "CS2") and stored.secret == SECRET

    listed = await run("webhook", "list", *flags)
    assert listed.code == 0 and hook in listed.out and "CS1,CS2" in listed.out
    assert SECRET not in listed.out
    shown = await run("webhook", "show", hook, "--json", *flags)
    assert shown.code == 0 and shown.json()["id"] == hook

    queued = await run("webhook", "test", hook, *flags)
    assert queued.code == 0
    deliveries = await run("webhook", "deliveries", hook, "--json", *flags)
    assert deliveries.code == 0
    assert [item["event_kind"] for item in deliveries.json()] == [TEST_EVENT_KIND]
    assert [item["state"] for item in deliveries.json()] == ["pending"]
    table = await run("webhook", "deliveries", hook, *flags)
    assert "webhook.test" in table.out and "pending" in table.out

    refused = await run("webhook", "add", "ftp://x/", "--secret", SECRET, *flags)
    assert refused.code == 2 and "url" in refused.err
    removed = await run("webhook", "rm", hook, *flags)
    assert removed.code == 0 and await api.services.webhooks.get(hook) is None
    missing = await run("webhook", "show", hook, *flags)
    assert missing.code == 2 and "webhook_not_found" in missing.err
