"""Every Redis key name authsvc uses. All of one user's keys share the hash tag `{u:<id>}`,
and an email's keys share `{e:<email digest>}`, so each script touches one cluster slot."""

from __future__ import annotations

import hashlib


class Keys:
    """Key names under one prefix."""

    __slots__ = ("channel", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channel = f"{prefix}:revocations"

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
