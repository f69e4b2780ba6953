"""Every Redis key name authsvc uses. All of one user's keys share the hash tag `{u:<id>}`,
and an email's keys share `{e:<email digest>}`, so each script touches one cluster slot.

Webhook events wait in an outbox stream in the slot of the change they report (see
authsvc/webhooks): one stream on a single Redis; on a cluster one per slot, named with a
hash tag chosen to fall in that slot (`slot_tags`)."""

from __future__ import annotations

import binascii
import functools
import hashlib

SLOTS = 16384


class Keys:
    """Key names under one prefix."""

    __slots__ = ("bell", "channel", "cluster", "prefix")

    def __init__(self, prefix: str, *, cluster: bool = False, events: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.channel = f"{prefix}:revocations"
        # The channel that wakes webhook workers when an event is queued; '' with webhooks
        # off, which is how the scripts know to queue nothing.
        self.bell = f"{prefix}:outbox:bell" if events else ""

    @property
    def replication_marker(self) -> str:
        """A counter written before each WAIT for a replica (see BoundedRedis.replicated)."""
        return f"{self.prefix}:replicated"

    def user_outbox(self, user_id: str) -> list[str]:
        """The outbox stream in the slot of the user's keys, as a list of the keys a script
        declares for it: none with webhooks off (a declared key that does not exist would
        make a migrating slot refuse every script with TRYAGAIN)."""
        return [self._outbox(f"u:{user_id}")] if self.bell else []

    def email_outbox(self, email: str) -> list[str]:
        """The outbox stream in the slot of an email's keys (see `user_outbox`)."""
        return [self._outbox(f"e:{_digest(email)}")] if self.bell else []

    def outboxes(self) -> list[str]:
        """Every outbox stream there can be."""
        if not self.cluster:
            return [f"{self.prefix}:outbox"]
        return [f"{self.prefix}:{{{tag}}}:outbox" for tag in slot_tags()]

    def _outbox(self, hash_tag: str) -> str:
        if not self.cluster:
            return f"{self.prefix}:outbox"
        return f"{self.prefix}:{{{slot_tags()[slot(hash_tag)]}}}:outbox"

    def session_index(self, user_id: str) -> str:
        """Sorted set of the user's session ids, scored by last_used_at (ms)."""
        return f"{self.prefix}:{{u:{user_id}}}:s"

    def session(self, user_id: str, session_id: str) -> str:
        """Hash of one session; the scripts derive it as `session_index + ':' + id`."""
        return f"{self.prefix}:{{u:{user_id}}}:s:{session_id}"

    def user(self, user_id: str) -> str:
        """Hash of the account: email, password hash and password version."""
        return f"{self.prefix}:{{u:{user_id}}}:user"

    def ended(self, user_id: str) -> str:
        """Hash of the user's recently ended sessions: session id -> why, when, by which call."""
        return f"{self.prefix}:{{u:{user_id}}}:ended"

    def email(self, email: str) -> str:
        """The user id registered under a normalized email."""
        return f"{self.prefix}:{{e:{_digest(email)}}}:uid"

    def login_failures(self, email: str) -> str:
        """Throttle counter of password checks for an email (registered or not)."""
        return f"{self.prefix}:{{e:{_digest(email)}}}:fails"

    def client_failures(self, name: str) -> str:
        """Throttle counter of failed authentications under a client name (any name a
        request gives: digested)."""
        return f"{self.prefix}:{{c:{_digest(name)}}}:fails"

    def ip_client_failures(self, ip: str) -> str:
        """Throttle counter of failed client authentications from one address (or /64)."""
        return f"{self.prefix}:{{ip:{ip}}}:client-fails"

    def ip_attempts(self, ip: str) -> str:
        """Throttle counter of login and signup attempts from one client address (or /64)."""
        return f"{self.prefix}:{{ip:{ip}}}:attempts"


def _digest(text: str) -> str:
    # Keeps addresses out of key names (and MONITOR output) and bounds key length.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def slot(hash_tag: str) -> int:
    """The cluster slot of keys with this hash tag."""
    return binascii.crc_hqx(hash_tag.encode("utf-8"), 0) % SLOTS


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each cluster slot, the first of the hash tags o0, o1, … (hex) that falls in it:
    a fixed table (part of the storage layout), computed once in about 0.1 s."""
    tags: list[str | None] = [None] * SLOTS
    missing, n = SLOTS, 0
    while missing:
        tag = f"o{n:x}"
        i = slot(tag)
        if tags[i] is None:
            tags[i] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)
