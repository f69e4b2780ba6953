"""Security promises under concurrency and clock skew: throttles, password changes, grace
windows and replays, each with two app instances on one Redis."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError

from authsvc.domain.clock import Clock
from authsvc.settings import Settings
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts, script_text
from authsvc.store.sessions import SessionStore
from authsvc.web.context import REDIS, SERVICE
from tests.conftest import ClientFactory, with_
from tests.helpers import PASSWORD, Client, SkewedClock, bearer, login, me_status, refresh, signup

NEW_PASSWORD = "a much better passphrase"


async def _attempt(client: Client, email: str, password: str) -> int:
    response = await client.post("/v1/auth/login", json={"email": email, "password": password})
    await response.read()
    if response.status == 429:
        assert int(response.headers["Retry-After"]) >= 1
    return response.status


async def _change_password(
    client: Client, tokens: dict[str, Any], current: str, new: str = NEW_PASSWORD
) -> int:
    response = await client.post(
        "/v1/auth/password",
        json={"current_password": current, "new_password": new},
        headers=bearer(tokens),
    )
    await response.read()
    return response.status


async def test_concurrent_wrong_logins_on_two_instances_get_at_most_the_limit_of_checks(
    make_client: ClientFactory, settings: Settings
) -> None:
    s = with_(settings, login_failure_limit=3)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "guessed@example.com")
    statuses = await asyncio.gather(
        *(_attempt(c, "guessed@example.com", f"wrong guess {i}") for i, c in enumerate([a, b] * 50))
    )
    assert Counter(statuses) == {401: 3, 429: 97}
    assert await _attempt(b, "guessed@example.com", PASSWORD) == 429  # even the right one


async def test_concurrent_right_logins_of_one_user_are_not_throttled(
    make_client: ClientFactory, settings: Settings
) -> None:
    s = with_(settings, login_failure_limit=3, session_limit=100)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "busy@example.com")
    statuses = await asyncio.gather(
        *(_attempt(c, "busy@example.com", PASSWORD) for c in [a, b] * 15)
    )
    assert statuses == [200] * 30


async def test_wrong_current_passwords_are_throttled_like_logins(
    make_client: ClientFactory, settings: Settings
) -> None:
    s = with_(settings, login_failure_limit=5)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "stolen@example.com")
    tokens = await login(a, "stolen@example.com")

    statuses = await asyncio.gather(
        *(_change_password(c, tokens, f"guess number {i}") for i, c in enumerate([a, b] * 20))
    )
    assert Counter(statuses) == {401: 5, 429: 35}
    assert await _change_password(a, tokens, PASSWORD) == 429  # the 41st, right, is refused too
    assert await _attempt(b, "stolen@example.com", PASSWORD) == 429  # one counter for both


async def test_logins_verified_before_a_password_change_leave_no_live_session(
    make_client: ClientFactory, settings: Settings
) -> None:
    s = with_(settings, session_limit=100)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "changer@example.com")
    tokens = await login(a, "changer@example.com")
    # Logins on b check the old password, then wait before storing their sessions.
    sessions: SessionStore = b.app[SERVICE]._sessions
    verified, go_on = asyncio.Semaphore(0), asyncio.Event()
    store = sessions.create

    async def create_later(**kwargs: Any) -> Any:
        verified.release()
        await go_on.wait()
        return await store(**kwargs)

    sessions.create = create_later  # type: ignore[method-assign]
    logins = [
        asyncio.ensure_future(_attempt(b, "changer@example.com", PASSWORD)) for _ in range(10)
    ]
    for _ in logins:
        await verified.acquire()
    assert await _change_password(a, tokens, PASSWORD) == 204
    go_on.set()
    assert await asyncio.gather(*logins) == [401] * 10
    listed = await a.get("/v1/sessions", headers=bearer(tokens))
    assert [x["session_id"] for x in (await listed.json())["sessions"]] == [tokens["session_id"]]
    assert await _attempt(a, "changer@example.com", PASSWORD) == 401
    assert await _attempt(a, "changer@example.com", NEW_PASSWORD) == 200


async def test_a_password_change_ends_the_other_sessions_in_the_same_step(
    make_client: ClientFactory, settings: Settings
) -> None:
    a, b = await make_client(settings), await make_client(settings)
    await signup(a, "one-step@example.com")
    keep, other = await login(a, "one-step@example.com"), await login(b, "one-step@example.com")
    assert await me_status(b, other) == 200  # b caches the session as live
    assert await _change_password(a, keep, PASSWORD) == 204
    assert (await refresh(b, other["refresh_token"]))[0] == 401
    for _ in range(100):  # the revocation reaches b within a second
        if await me_status(b, other) == 401:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("b still admits a session the password change ended")
    assert await me_status(a, keep) == 200


async def test_clock_skew_between_instances_neither_shrinks_nor_stretches_the_grace_window(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    ahead = await make_client(settings, clock=SkewedClock(clock, 11))
    behind = await make_client(settings, clock=SkewedClock(clock, -30))
    await signup(ahead, "skew@example.com")
    first = await login(ahead, "skew@example.com")
    status, second = await refresh(behind, first["refresh_token"])
    assert status == 200
    clock.advance(1)
    # 1 s after the rotation, on the instance 11 s ahead: a retry within the grace window.
    status, again = await refresh(ahead, first["refresh_token"])
    assert (status, again["refresh_token"]) == (200, second["refresh_token"])
    clock.advance(34)
    # 35 s after the rotation, on the instance 30 s behind: reuse, and the session ends.
    status, body = await refresh(behind, first["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")
    assert (await refresh(ahead, second["refresh_token"]))[0] == 401


async def test_clock_skew_changes_no_session_lifetime(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    s = with_(settings, session_idle_ttl=100, session_max_ttl=1000, access_token_ttl=10)
    ahead = await make_client(s, clock=SkewedClock(clock, 60))
    behind = await make_client(s, clock=SkewedClock(clock, -60))
    await signup(ahead, "lifetime@example.com")
    tokens = await login(behind, "lifetime@example.com")
    clock.advance(99)
    status, tokens = await refresh(ahead, tokens["refresh_token"])  # 1 s before the idle end
    assert status == 200
    assert tokens["refresh_expires_in"] == 100
    clock.advance(101)
    status, _ = await refresh(behind, tokens["refresh_token"])  # 1 s after it
    assert status == 401


async def test_a_replayed_revoke_answers_as_its_first_run(
    client: Client, settings: Settings
) -> None:
    user_id = await signup(client, "replay@example.com")
    tokens = await login(client, "replay@example.com")
    scripts = Scripts(client.app[REDIS])
    keys = Keys(settings.key_prefix)
    call = [keys.session_index(user_id), keys.ended(user_id)]
    args = [keys.channel, tokens["session_id"], "", "logout", user_id, "call-1", 0]
    assert await scripts.revoke_sessions(keys=call, args=args) == [tokens["session_id"]]
    # redis-py replays a command whose reply was lost: the replay must not become a 404.
    assert await scripts.revoke_sessions(keys=call, args=args) == [tokens["session_id"]]
    other = [*args[:5], "call-2", 0]  # another request for the same, ended, session
    assert await scripts.revoke_sessions(keys=call, args=other) == []


async def test_a_replayed_password_change_answers_as_its_first_run(
    client: Client, settings: Settings
) -> None:
    user_id = await signup(client, "replay-pw@example.com")
    await login(client, "replay-pw@example.com")
    scripts = Scripts(client.app[REDIS])
    keys = Keys(settings.key_prefix)
    call = [keys.user(user_id), keys.session_index(user_id), keys.ended(user_id)]
    args = ["$2b$04$not-a-real-hash", "0", "", keys.channel, user_id, "call-1", 0]
    first = await scripts.change_password(keys=call, args=args)
    assert len(first) == 1
    assert await scripts.change_password(keys=call, args=args) == []  # succeeded, nothing new
    assert await scripts.change_password(keys=call, args=[*args[:5], "call-2", 0]) is None


async def test_a_replayed_rotation_answers_as_its_first_run_even_without_a_grace_window(
    client: Client, settings: Settings
) -> None:
    user_id = await signup(client, "replay-rotate@example.com")
    tokens = await login(client, "replay-rotate@example.com")
    scripts = Scripts(client.app[REDIS])
    keys = Keys(settings.key_prefix)
    sid = tokens["session_id"]
    call = [keys.session_index(user_id), keys.session(user_id, sid), keys.ended(user_id)]
    day = 86_400_000
    args = [sid, 0, day, day, 0, keys.channel, user_id, 0, "call-1"]  # grace 0
    first = await scripts.rotate_session(keys=call, args=args)
    assert first[:2] == [1, 1]
    # As if the rotation was a second ago (a replay comes some time after its first run).
    await client.app[REDIS].hset(keys.session(user_id, sid), "u", first[3] - 1000)
    assert (await scripts.rotate_session(keys=call, args=args))[:2] == [1, 1]  # the replay
    # Another request with the same (now old) generation is reuse: the session ends.
    assert await scripts.rotate_session(keys=call, args=[*args[:8], "call-2"]) == [2]


async def _throttle_state(client: Client, key: str) -> tuple[int, int]:
    n, p = await client.app[REDIS].hmget(key, ["n", "p"])
    return int(n or 0), int(p or 0)


async def test_a_check_is_settled_once_and_only_in_its_own_window(
    client: Client, settings: Settings
) -> None:
    scripts = Scripts(client.app[REDIS])
    key = Keys(settings.key_prefix).login_failures("settle@example.com")

    async def step(op: str, check: str, shift_ms: int = 0) -> int:
        return int(await scripts.throttle(keys=[key], args=[3, 60_000, op, shift_ms, check]))

    assert await step("take", "a") == 0
    assert await step("take", "a") == 0  # a replayed take counts nothing
    assert await step("take", "b") == 0
    assert await _throttle_state(client, key) == (2, 2)
    await step("pass", "a")
    await step("pass", "a")  # a replayed pass uncounts nothing more
    await step("fail", "b")
    assert await _throttle_state(client, key) == (1, 0)  # b's failure stays counted

    assert await step("take", "old") == 0
    assert await step("take", "new", shift_ms=60_000) == 0  # the next window
    await step("pass", "old")  # a check of the last window cannot uncount this one's
    await step("fail", "new", shift_ms=60_000)
    assert await _throttle_state(client, key) == (1, 0)


async def test_a_window_with_nothing_counted_and_nothing_in_flight_is_forgotten(
    client: Client, settings: Settings
) -> None:
    scripts = Scripts(client.app[REDIS])
    key = Keys(settings.key_prefix).login_failures("forgotten@example.com")

    async def step(op: str, check: str) -> int:
        return int(await scripts.throttle(keys=[key], args=[3, 60_000, op, 0, check]))

    assert await step("take", "a") == 0
    assert await step("take", "b") == 0
    await step("pass", "a")
    assert await client.app[REDIS].exists(key) == 1  # b is still in flight
    await step("pass", "b")
    assert await client.app[REDIS].exists(key) == 0  # a successful login leaves nothing
    await step("pass", "b")  # a replayed pass finds nothing to settle
    assert await client.app[REDIS].exists(key) == 0


async def test_a_logout_whose_reply_is_lost_is_replayed_and_still_answers_204(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await signup(client, "lost-reply@example.com")
    tokens = await login(client, "lost-reply@example.com")
    other = await login(client, "lost-reply@example.com")
    revoke = hashlib.sha1(script_text("revoke_sessions").encode(), usedforsecurity=False)
    lost: list[str] = []

    def losing(run: Any, is_revoke: Callable[..., bool]) -> Any:
        async def lose_first_revoke_reply(*args: Any, **kwargs: Any) -> Any:
            reply = await run(*args, **kwargs)  # it ran in Redis ...
            if not lost and is_revoke(*args):
                lost.append("reply")
                raise RedisConnectionError("reply lost")  # ... but its reply does not arrive
            return reply

        return lose_first_revoke_reply

    def command_revokes(node: ClusterNode, *command: Any) -> bool:
        return command[:2] == ("EVALSHA", revoke.hexdigest())

    def pipeline_revokes(pipe: Pipeline, connection: Any, commands: Any, *_: Any) -> bool:
        return any(command[:2] == ("EVALSHA", revoke.hexdigest()) for command, _ in commands)

    if settings.redis_cluster:  # each command on its own
        run = losing(ClusterNode.execute_command, command_revokes)
        monkeypatch.setattr(ClusterNode, "execute_command", run)
    else:  # scripts travel in pipelines (BoundedRedis.evalsha_batched)
        run = losing(Pipeline._execute_pipeline, pipeline_revokes)
        monkeypatch.setattr(Pipeline, "_execute_pipeline", run)
    response = await client.delete(f"/v1/sessions/{other['session_id']}", headers=bearer(tokens))
    assert lost == ["reply"]  # redis-py sent the script again
    assert response.status == 204  # the replay answered as the first run did, not 404
    assert (await refresh(client, other["refresh_token"]))[0] == 401
