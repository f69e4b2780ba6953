"""User agents as session hashes store them: deflated against a dictionary of the fragments
that browsers' User-Agent headers are made of. A full browser user agent (100 to 150
characters) then takes 14 to 30 bytes, and every session hash stays within Redis's compact
listpack encoding (values up to `hash-max-listpack-value`, 64 bytes by default; one longer
value turns the hash into a hashtable, about 300 bytes more)."""

from __future__ import annotations

import base64
import functools
import zlib

MAX_LENGTH = 512  # characters of a User-Agent header that are kept, before packing
MAX_STORED = 64  # bytes of a stored value: Redis's default hash-max-listpack-value
# Starts a packed value. Never the first character of a stored User-Agent: the HTTP parser
# refuses control characters in header values, and `pack` drops any that get this far.
MARKER = "\x01"  # followed by base85 (no quote, backslash or slash: JSON carries it as is)
# What user agents are made of, not any particular one: versions are left out, and the
# most common fragments come last (deflate reaches the end of its window most cheaply).
# Packed values are decoded with this very text: it may only ever be appended to in a new
# packing version, never changed.
_DICTIONARY = (
    b"Opera/OPR/YaBrowser/Vivaldi/Brave/DuckDuckGo/ Instagram FBAN/FBAV/ Electron/ HeadlessChrome/"
    b"okhttp/ python-requests/ curl/ PostmanRuntime/ Dalvik/2.1.0 (Linux; U; Android Build/"
    b"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:) Gecko/20100101 Firefox/"
    b"Mozilla/5.0 (iPad; CPU OS like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/"
    b" FxiOS/ EdgiOS/ Mobile/15E148 Safari/604.1"
    b"Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"SamsungBrowser/ Chrome/.0.0.0 Mobile Safari/537.36"
    b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/"
    b".0.0.0 Safari/537.36"
    b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/"
    b".0.0.0 Mobile Safari/537.36"
    b"Mozilla/5.0 (iPhone; CPU iPhone OS _0 like Mac OS X) AppleWebKit/605.1.15 "
    b"(KHTML, like Gecko) Version/ Mobile/15E148 Safari/604.1"
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/ Safari/605.1.15"
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/.0.0.0 Safari/537.36"
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:) Gecko/20100101 Firefox/"
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/.0.0.0 Safari/537.36 Edg/"
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/.0.0.0 Safari/537.36"
)


_WINDOW_BITS = 12  # raw deflate (no header), a 4 KiB window
assert len(_DICTIONARY) <= 1 << _WINDOW_BITS


@functools.lru_cache(maxsize=4096)  # user agents repeat: every refresh passes its own
def pack(user_agent: str) -> str:
    """The stored form of `user_agent`: packed where that is shorter, and whole where that
    fits MAX_STORED bytes; else its first MAX_STORED bytes, as text. One compression at
    most, so that a client sending a new agent each time costs little."""
    text = "".join(c for c in user_agent if (c >= " " and c != "\x7f") or c == "\t")
    text = text.encode("utf-8", "replace").decode()  # lone surrogates become "?"
    stored = _shorter(text)
    if len(stored.encode()) <= MAX_STORED:
        return stored
    return text.encode()[:MAX_STORED].decode("utf-8", "ignore")


def unpack(stored: str) -> str:
    """The user agent that `pack` stored (a value stored before packing, as it is)."""
    if not stored.startswith(MARKER):
        return stored
    try:
        data = base64.b85decode(stored[1:])
        inflate = zlib.decompressobj(-_WINDOW_BITS, zdict=_DICTIONARY)
        return inflate.decompress(data, 4 * MAX_LENGTH).decode("utf-8", "replace")
    except (ValueError, zlib.error):
        return ""


def _shorter(text: str) -> str:
    # A 4 KiB window holds the whole dictionary; small state tables make a compressor
    # cheap to set up (5 µs instead of 100 at zlib's defaults), at no cost in size here.
    deflate = zlib.compressobj(
        9, zlib.DEFLATED, -_WINDOW_BITS, 2, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY
    )
    data = deflate.compress(text.encode("utf-8", "replace")) + deflate.flush()
    packed = MARKER + base64.b85encode(data).decode()
    return packed if len(packed) < len(text.encode()) else text
