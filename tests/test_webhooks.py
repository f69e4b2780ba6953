"""Webhooks (contract section 6): every session and account change queues its event in the
same script, a receiver verifies each delivery with the `standardwebhooks` library, and
delivery is at least once through a receiver outage, an authsvc restart and several
instances delivering together.

Real redis-server, single and cluster; the receiver is a real HTTP server on loopback.
Deliveries are awaited with deadlines, never slept for."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from authsvc.domain.clock import Clock
from authsvc.settings import Settings, SettingsError, load_settings
from authsvc.store.keys import Keys, slot, slot_tags
from authsvc.webhooks import worker
from authsvc.webhooks.worker import MAX_RETRY, backoff
from tests.conftest import Backend, ClientFactory, free_port, with_
from tests.helpers import PASSWORD, bearer, login, raw_redis, refresh, signup
from tests.process import Service

SECRET = "whsec_" + base64.b64encode(b"a test secret, 24+ bytes!").decode()
NEW_PASSWORD = "another horse battery"
DELIVERED = "authsvc_webhook_events_delivered_total"


@dataclasses.dataclass
class Receiver:
    """A webhook receiver on loopback: verifies every request with the Standard Webhooks
    library and records what it accepted; answers 503 while `up` is False."""

    port: int
    up: bool = True
    accepted: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)  # webhook ids, while down
    rejected_user_agent: str | None = None  # events carrying it are answered 422
    forged: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            self.forged += 1
            return web.Response(status=400)
        if not self.up:
            self.refused.append(request.headers["webhook-id"])
            return web.Response(status=503)
        if self.rejected_user_agent and event["data"].get("user_agent") == self.rejected_user_agent:
            self.refused.append(request.headers["webhook-id"])
            return web.Response(status=422)
        self.accepted.append(event)
        self.ids.append(request.headers["webhook-id"])
        return web.Response(status=204)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.accepted if e["type"] == kind]

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.accepted)} of {count} events arrived: {self.accepted}"
            )
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiving = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/hooks", receiving.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiving.port).start()
    yield receiving
    await runner.cleanup()


@pytest.fixture
def hook_settings(settings: Settings, receiver: Receiver) -> Settings:
    return with_(settings, webhook_url=receiver.url, webhook_secret=SECRET)


# --- events ---------------------------------------------------------------------------------


async def test_every_change_is_delivered_signed_with_its_fields(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    app = await make_client(with_(hook_settings, session_limit=2))
    user_id = await signup(app, "hooks@example.com")
    first = await login(app, "hooks@example.com", **{"User-Agent": "Phone/1.0"})
    second = await login(app, "hooks@example.com")
    third = await login(app, "hooks@example.com")  # evicts the first
    await receiver.wait_for(5)

    assert receiver.of("user.created") == [{"user_id": user_id, "email": "hooks@example.com"}]
    created = receiver.of("session.created")
    assert [c["session_id"] for c in created] == [t["session_id"] for t in (first, second, third)]
    assert created[0] == {
        "user_id": user_id,
        "session_id": first["session_id"],
        "ip": "127.0.0.1",
        "user_agent": "Phone/1.0",
    }
    assert receiver.of("session.ended") == [{**created[0], "reason": "evicted"}]

    # Reuse: a refresh token two rotations old, from another device.
    status, rotated = await refresh(app, second["refresh_token"])
    assert status == 200
    status, _ = await refresh(app, rotated["refresh_token"])
    assert status == 200
    thief = await app.post(
        "/v1/auth/refresh",
        json={"refresh_token": second["refresh_token"]},
        headers={"User-Agent": "Thief/6.6"},
    )
    assert thief.status == 401
    await receiver.wait_for(7)
    [reuse] = receiver.of("session.reuse_detected")
    assert reuse == {
        "user_id": user_id,
        "session_id": second["session_id"],
        "ip": "127.0.0.1",
        "user_agent": "Thief/6.6",
    }
    assert receiver.of("session.ended")[1]["reason"] == "reuse_detected"

    # Logout, a password change (ends the others), and the owner's deletion.
    fourth = await login(app, "hooks@example.com")
    assert (await app.post("/v1/auth/logout", headers=bearer(third))).status == 204
    fifth = await login(app, "hooks@example.com")
    change = await app.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(fifth),
    )
    assert change.status == 204, await change.text()
    deletion = await app.delete("/v1/me", json={"password": NEW_PASSWORD}, headers=bearer(fifth))
    assert deletion.status == 204
    await receiver.wait_for(13)
    ended = {(e["session_id"], e["reason"]) for e in receiver.of("session.ended")}
    assert (third["session_id"], "logout") in ended
    assert (fourth["session_id"], "password_changed") in ended
    assert (fifth["session_id"], "account_deleted") in ended
    assert receiver.of("user.deleted") == [{"user_id": user_id, "email": "hooks@example.com"}]

    # Each event once, with a timestamp and an id that names it.
    assert len(set(receiver.ids)) == len(receiver.ids) == 13
    assert all(e["timestamp"].endswith("Z") for e in receiver.accepted)
    assert receiver.forged == 0


async def test_an_event_is_queued_by_the_script_that_makes_the_change(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    # The receiver is down: the events wait in the outbox, written with the changes.
    receiver.up = False
    app = await make_client(hook_settings)
    user_id = await signup(app, "queued@example.com")
    await login(app, "queued@example.com")
    keys = Keys(hook_settings.key_prefix, cluster=hook_settings.redis_cluster, events=True)
    r = raw_redis(hook_settings, decode_responses=True)
    try:
        entries: Any = await r.xrange(keys.user_outbox(user_id)[0])
        of_user = [fields["t"] for _, fields in entries]
        entries = await r.xrange(keys.email_outbox("queued@example.com")[0])
        of_email = [fields["t"] for _, fields in entries]
        if hook_settings.redis_cluster:  # each in the slot of the keys it concerns
            assert (of_user, of_email) == (["session.created"], ["user.created"])
        else:  # one outbox
            assert of_user == of_email == ["user.created", "session.created"]
    finally:
        await r.aclose()


async def test_without_a_webhook_url_nothing_is_queued(
    make_client: ClientFactory, settings: Settings
) -> None:
    app = await make_client(settings)
    user_id = await signup(app, "quiet@example.com")
    await login(app, "quiet@example.com")
    keys = Keys(settings.key_prefix, cluster=settings.redis_cluster, events=True)
    r = raw_redis(settings)
    try:
        assert await r.exists(keys.user_outbox(user_id)[0]) == 0
        assert await r.exists(keys.email_outbox("quiet@example.com")[0]) == 0
    finally:
        await r.aclose()


# --- delivery -------------------------------------------------------------------------------


async def test_a_receiver_outage_is_retried_with_the_same_ids_and_nothing_is_lost(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.up = False
    app = await make_client(hook_settings)
    await signup(app, "outage@example.com")
    for _ in range(3):
        await login(app, "outage@example.com")
    deadline = time.monotonic() + 10
    while len(receiver.refused) < 2:  # tried, refused, and tried again
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    receiver.up = True
    started = time.monotonic()
    await receiver.wait_for(4, within=MAX_RETRY + 5)
    assert time.monotonic() - started <= MAX_RETRY + 1
    assert set(receiver.refused) <= set(receiver.ids)  # retries kept their webhook-id
    assert sorted(e["type"] for e in receiver.accepted) == ["session.created"] * 3 + [
        "user.created"
    ]
    # Counted once the worker has its answer, which may be a moment after the receiver.
    deadline = time.monotonic() + 5
    while _metric(metrics := await (await app.get("/metrics")).text(), DELIVERED) < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert _metric(metrics, DELIVERED) == 4
    assert _metric(metrics, "authsvc_webhook_delivery_failures_total") >= 2


async def test_two_instances_deliver_each_event_once(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    one, two = await make_client(hook_settings), await make_client(hook_settings)
    emails = [f"pair{i}@example.com" for i in range(10)]
    await asyncio.gather(*(signup(app, e) for app, e in zip([one, two] * 5, emails, strict=True)))
    await asyncio.gather(*(login(app, e) for app, e in zip([two, one] * 5, emails, strict=True)))
    await receiver.wait_for(20)
    await asyncio.sleep(0)  # let a duplicate, if one were on its way, be counted
    assert Counter(receiver.ids).most_common(1)[0][1] == 1
    assert len(receiver.ids) == 20


async def test_an_event_that_fails_for_a_day_is_given_up(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver, clock: Clock
) -> None:
    receiver.up = False
    app = await make_client(hook_settings)
    await signup(app, "old@example.com")
    deadline = time.monotonic() + 10
    while not receiver.refused:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    clock.advance(86_400)
    while (
        "authsvc_webhook_events_dropped_total 1.0" not in await (await app.get("/metrics")).text()
    ):
        assert time.monotonic() < deadline + MAX_RETRY, "not given up"
        await asyncio.sleep(0.05)
    receiver.up = True
    await login(app, "old@example.com")  # the next event goes through; the old one is gone
    await receiver.wait_for(1)
    assert [e["type"] for e in receiver.accepted] == ["session.created"]


async def test_a_replayed_takeover_of_an_email_answers_as_the_first_and_queues_once(
    hook_settings: Settings,
) -> None:
    from authsvc.store import client as redis_client
    from authsvc.store.scripts import Scripts

    client = redis_client.connect(
        hook_settings.redis_url or "", cluster=hook_settings.redis_cluster
    )
    keys = Keys(hook_settings.key_prefix, cluster=hook_settings.redis_cluster, events=True)
    email = "orphan@example.com"
    try:
        scripts = Scripts(client)
        await client.set(keys.email(email), "gone")
        claim = [keys.email(email), *keys.email_outbox(email)]
        args = ["gone", "newcomer", email, keys.bell, 0]
        # The second call is what redis-py sends after a lost reply.
        assert [await scripts.swap_email(keys=claim, args=args) for _ in range(2)] == [1, 1]
        entries: Any = await client.xrange(keys.email_outbox(email)[0])
        assert [fields["t"] for _, fields in entries] == ["user.created"]
    finally:
        await client.aclose()


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert [backoff(n, lambda: 1.0) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]
    assert backoff(3, lambda: 0.0) == 2  # jitter: between half and all of the delay
    assert backoff(20, lambda: 1.0, cap=worker.CIRCUIT_MAX) == worker.CIRCUIT_MAX


async def test_an_event_the_receiver_refuses_holds_up_no_other(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    # A stolen token's holder picks a user agent the receiver rejects: the events after it
    # (the reuse alert among them) must still arrive.
    receiver.rejected_user_agent = "Poison/1.0"
    app = await make_client(hook_settings)
    await signup(app, "poison@example.com")
    await login(app, "poison@example.com", **{"User-Agent": "Poison/1.0"})
    deadline = time.monotonic() + 10
    while len(receiver.refused) < 2:  # refused, and tried again on its own schedule
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    for _ in range(5):
        await login(app, "poison@example.com")
    await receiver.wait_for(6)  # user.created and 5 logins (the eviction carries the agent too)
    assert len(receiver.of("session.created")) == 5


async def test_a_worker_holding_all_it_may_does_not_spin(
    make_client: ClientFactory,
    hook_settings: Settings,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "MAX_HELD", 2)
    receiver.up = False
    app = await make_client(hook_settings)
    await signup(app, "full@example.com")
    for _ in range(4):
        await login(app, "full@example.com")
    deadline = time.monotonic() + 10
    while not receiver.refused:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    rounds = 0
    fill = worker.WebhookWorker._fill

    async def counted(self: worker.WebhookWorker, now: float) -> None:
        nonlocal rounds
        rounds += 1
        await fill(self, now)

    monkeypatch.setattr(worker.WebhookWorker, "_fill", counted)
    await asyncio.sleep(1.0)  # a loop that spun would go round thousands of times
    assert rounds < 20
    receiver.up = True
    await receiver.wait_for(5, within=worker.CIRCUIT_MAX + 10)


async def test_an_unreadable_outbox_entry_is_dropped_and_counted(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    app = await make_client(hook_settings)
    keys = Keys(hook_settings.key_prefix, cluster=hook_settings.redis_cluster, events=True)
    r = raw_redis(hook_settings, decode_responses=True)
    try:
        await r.xadd(keys.user_outbox("someone")[0], {"t": "session.created", "d": "{not json"})
    finally:
        await r.aclose()
    await signup(app, "after@example.com")
    await receiver.wait_for(1)
    deadline = time.monotonic() + 10
    while (
        "authsvc_webhook_events_dropped_total 1.0" not in await (await app.get("/metrics")).text()
    ):
        assert time.monotonic() < deadline, "the unreadable entry was not dropped"
        await asyncio.sleep(0.05)
    assert [e["type"] for e in receiver.accepted] == ["user.created"]


async def test_webhook_ids_differ_between_installations_on_one_redis(
    make_client: ClientFactory, hook_settings: Settings, receiver: Receiver
) -> None:
    one = await make_client(hook_settings)
    two = await make_client(with_(hook_settings, key_prefix=hook_settings.key_prefix + "b"))
    await asyncio.gather(signup(one, "same@example.com"), signup(two, "same@example.com"))
    await receiver.wait_for(2)
    first, second = receiver.ids
    assert first != second
    assert first.split("_")[1] != second.split("_")[1]  # the salts, not only the entry ids


def test_cluster_outboxes_cover_every_slot_with_one_tag_each() -> None:
    tags = slot_tags()
    assert len(tags) == len(set(tags)) == 16384
    assert all(slot(tag) == i for i, tag in enumerate(tags))
    keys = Keys("p", cluster=True, events=True)
    user_outbox = keys.user_outbox("abc")[0]
    assert slot(user_outbox[user_outbox.index("{") + 1 : user_outbox.index("}")]) == slot("u:abc")


# --- restart, as a process ------------------------------------------------------------------


async def test_events_survive_an_authsvc_restart(
    redis_backend: Backend, receiver: Receiver, tmp_path: Path
) -> None:
    env = {
        **redis_backend.env(),
        "AUTHSVC_KEY_PREFIX": f"hookrestart{os.getpid()}",
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_JWT_SECRET": "x" * 32,
        "AUTHSVC_WEBHOOK_URL": receiver.url,
        "AUTHSVC_WEBHOOK_SECRET": SECRET,
    }
    receiver.up = False
    log = tmp_path / "authsvc.log"
    with Service(env, log=log) as first:
        await asyncio.to_thread(first.wait_ready)
        await _signup_and_login(first.url, "restart@example.com")
        deadline = time.monotonic() + 10
        while not receiver.refused:  # the worker holds them, retrying
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(first.stop) == 0
    receiver.up = True
    with Service(env, log=log) as second:
        await asyncio.to_thread(second.wait_ready)
        await receiver.wait_for(2, within=15)
        assert sorted(e["type"] for e in receiver.accepted) == ["session.created", "user.created"]
        assert await asyncio.to_thread(second.stop) == 0


async def test_the_example_receiver_verifies_deliveries_from_the_embedded_default(
    tmp_path: Path,
) -> None:
    receiver_log = tmp_path / "receiver.log"
    program = ("examples/webhook_receiver.py",)
    with Service({"WEBHOOK_SECRET": SECRET}, log=receiver_log, program=program) as example:
        await asyncio.to_thread(example.wait_ready)
        env = {
            "AUTHSVC_JWT_SECRET": "x" * 32,
            "AUTHSVC_WEBHOOK_URL": f"{example.url}/webhooks",
            "AUTHSVC_WEBHOOK_SECRET": SECRET,
        }
        with Service(env, log=tmp_path / "authsvc.log") as authsvc:
            await asyncio.to_thread(authsvc.wait_ready)
            await _signup_and_login(authsvc.url, "example@example.com")
            deadline = time.monotonic() + 10
            while len(printed := _events_in(receiver_log)) < 2:
                assert time.monotonic() < deadline, receiver_log.read_text()
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(authsvc.stop) == 0
        assert sorted(e["type"] for e in printed) == ["session.created", "user.created"]
        assert all(e["id"].startswith("evt_") for e in printed)


def _events_in(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"id"')]


async def _signup_and_login(url: str, email: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession(url) as http:
        body = {"email": email, "password": PASSWORD}
        async with http.post("/v1/auth/signup", json=body) as response:
            assert response.status == 201
        async with http.post("/v1/auth/login", json=body) as response:
            assert response.status == 200


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUTHSVC_WEBHOOK_URL": "ftp://example.com/h", "AUTHSVC_WEBHOOK_SECRET": SECRET}, "URL"),
        ({"AUTHSVC_WEBHOOK_URL": "example.com/h", "AUTHSVC_WEBHOOK_SECRET": SECRET}, "URL"),
        ({"AUTHSVC_WEBHOOK_URL": "http:///h", "AUTHSVC_WEBHOOK_SECRET": SECRET}, "URL"),
        ({"AUTHSVC_WEBHOOK_URL": "https://example.com/h"}, "SECRET"),
        ({"AUTHSVC_WEBHOOK_URL": "https://e.com", "AUTHSVC_WEBHOOK_SECRET": "s3cret"}, "SECRET"),
        ({"AUTHSVC_WEBHOOK_URL": "https://e.com", "AUTHSVC_WEBHOOK_SECRET": "whsec_!!"}, "SECRET"),
        (
            {"AUTHSVC_WEBHOOK_URL": "https://e.com", "AUTHSVC_WEBHOOK_SECRET": "whsec_YWJj"},
            "SECRET",
        ),
        ({"AUTHSVC_WEBHOOK_SECRET": SECRET}, "SECRET"),
    ],
)
def test_bad_webhook_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^AUTHSVC_WEBHOOK_{variable}: ") as caught:
        load_settings(env)
    assert SECRET not in str(caught.value)


def test_good_webhook_settings_load_and_keep_the_secret_out_of_repr() -> None:
    unpadded = SECRET.rstrip("=")
    s = load_settings(
        {"AUTHSVC_WEBHOOK_URL": "https://e.com/h", "AUTHSVC_WEBHOOK_SECRET": unpadded}
    )
    assert s.webhook_url == "https://e.com/h"
    assert unpadded not in repr(s)


def test_claims_are_taken_over_only_after_the_idle_time() -> None:
    # What a worker holds is touched at every sweep, which a round of tries can delay by up
    # to its timeout: the claim time outlasts both, twice over.
    longest_gap = worker.CLUSTER_SWEEP_EVERY + worker.ATTEMPT_TIMEOUT
    assert 2 * longest_gap < worker.CLAIM_IDLE_MS / 1000
