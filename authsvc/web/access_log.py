"""The access log: one line per request, written without the logging module's per-record
cost and in batches. A request only appends a tuple; the lines are formatted and written
together at the flush, every FLUSH_EVERY seconds, after FLUSH_RECORDS requests and at
shutdown. (Measured under load: formatting each line as its request ends cost about 5 µs a
request, a tenth of a `GET /v1/me`; formatting a batch in one loop costs a fraction of it.)
Same shape as every other log line: JSON with ts, level, logger, msg and fields."""

from __future__ import annotations

import time
from typing import BinaryIO

FLUSH_EVERY = 0.2  # seconds
FLUSH_RECORDS = 1024

_Record = tuple[float, str, str, str, int, float]  # wall time, id, method, route, status, s


class AccessLog:
    """Buffers request records for `stream`; `enabled` is False above log level info."""

    def __init__(self, stream: BinaryIO, *, json: bool, enabled: bool) -> None:
        self._stream = stream
        self._json = json
        self.enabled = enabled
        self._records: list[_Record] = []

    def write(self, request_id: str, method: str, route: str, status: int, seconds: float) -> None:
        """Add one request's line."""
        records = self._records
        records.append((time.time(), request_id, method, route, status, seconds))
        if len(records) >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Write out the lines of the requests recorded so far."""
        if not self._records:
            return
        records, self._records = self._records, []
        lines = []
        second, stamp = -1, ""
        for now, request_id, method, route, status, seconds in records:
            if int(now) != second:
                second = int(now)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            ms = int((now - second) * 1000)
            if self._json:
                # Written out by hand, no encoder: every value is JSON-safe as it is. The
                # request id passed observe.py's pattern, the route is one of ours, and
                # HTTP methods are tokens (no quote or backslash), which the parser enforced.
                lines.append(
                    f'{{"ts":"{stamp}.{ms:03d}Z","level":"info","logger":"authsvc.access",'
                    f'"msg":"request","request_id":"{request_id}","method":"{method}",'
                    f'"route":"{route}","status":{status},"duration_ms":{seconds * 1000:.3f}}}\n'
                )
            else:
                lines.append(
                    f"{stamp}.{ms:03d}Z INFO authsvc.access {method} {route} {status} "
                    f"{seconds * 1000:.3f}ms {request_id}\n"
                )
        self._stream.write("".join(lines).encode())
        self._stream.flush()
