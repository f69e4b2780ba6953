"""Signatures made in batches: the access tokens that requests ask for in one event-loop
iteration are signed together, one right after another.

Under load a refresh's ES256 signature cost about 45 µs in the service, against 22 µs in a
loop of signatures: between two requests' signatures the rest of the request (Python,
aiohttp, the socket) pushes OpenSSL's code and tables out of the CPU's caches. Requests
arrive in groups (the replies of one Redis batch wake them together), so signing a group in
one go keeps them warm. Measured with the benchmark's refresh load (one A/B run): 0.74x ->
0.88x the session baseline. A lone request waits one loop iteration, not for others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def jws_signer(alg: str, key: Any) -> Callable[[bytes], bytes]:
    """The JWS signature function of `alg` with `key`. ES256 (the default) is made here,
    straight from cryptography: R and S of 32 bytes each (RFC 7518, 3.4); PyJWT's builds
    its hash and ECDSA objects on every call and converts R and S through hex text: 26 µs
    a signature against 22 here. Every other algorithm is PyJWT's."""
    if alg == "ES256":
        ecdsa = ec.ECDSA(hashes.SHA256())

        def es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(key.sign(data, ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return es256
    sign = jwt.get_algorithm_by_name(alg).sign
    return lambda data: sign(data, key)


class BatchSigner:
    """`await signer(data)`: the signature of `data`, made with the others of its batch."""

    def __init__(self, sign: Callable[[bytes], bytes]) -> None:
        self._sign = sign
        self._batch: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the current batch's

    def __call__(self, data: bytes) -> asyncio.Future[bytes]:
        # Asked once a batch: on Python 3.11 every get_running_loop() is a getpid() syscall.
        loop = self._loop
        if not self._batch or loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._sign_batch)
        future: asyncio.Future[bytes] = loop.create_future()
        self._batch.append((data, future))
        return future

    def _sign_batch(self) -> None:
        batch, self._batch = self._batch, []
        for data, future in batch:
            if future.done():  # its caller was cancelled
                continue
            try:
                future.set_result(self._sign(data))
            except Exception as exc:  # a key the library refuses: that caller's error
                future.set_exception(exc)
