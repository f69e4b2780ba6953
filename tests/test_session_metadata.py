"""User agents and client addresses as session hashes keep them: packed, whole where they
fit, always readable."""

from __future__ import annotations

import pytest

from authsvc.store import addresses
from authsvc.store.user_agents import MARKER, MAX_STORED, pack, unpack

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36 Edg/142.0.3595.53",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
]


@pytest.mark.parametrize("agent", BROWSERS)
def test_a_browser_user_agent_is_kept_whole_in_a_fraction_of_its_length(agent: str) -> None:
    stored = pack(agent)
    assert stored.startswith(MARKER)
    assert len(stored.encode()) <= 40 < len(agent)
    assert unpack(stored) == agent


@pytest.mark.parametrize("agent", ["", "curl/8.5.0", "okhttp/4.12.0", "phone/1.0"])
def test_a_short_user_agent_is_stored_as_it_is(agent: str) -> None:
    assert pack(agent) == agent
    assert unpack(agent) == agent


def test_a_user_agent_that_does_not_fit_keeps_its_first_bytes() -> None:
    agent = "".join(f"Token{n:04d}/{n * 7919 % 10007} " for n in range(60))  # no pattern to pack
    assert pack(agent) == unpack(pack(agent)) == agent[:MAX_STORED]


def test_multibyte_text_is_counted_in_bytes() -> None:
    agent = "Ünïcödé-браузер/1.0 " * 30
    stored = pack(agent)
    assert len(stored.encode()) <= MAX_STORED
    assert agent.startswith(unpack(stored))


def test_control_characters_never_reach_the_store_but_tabs_do() -> None:
    assert pack(MARKER + "agent\x00/1\x7f") == "agent/1"
    assert pack("agent\t/1") == "agent\t/1"
    assert pack("caf\udce9 browser") == "caf? browser"  # a lone surrogate from the parser


def test_a_value_stored_before_packing_reads_as_it_is_and_garbage_reads_as_nothing() -> None:
    assert unpack("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, l") == (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, l"
    )
    assert unpack(MARKER + "!!not base64!!") == ""
    assert unpack(MARKER + "AAAA") == ""


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "127.0.0.1", "203.0.113.45", "255.255.255.255"],  # noqa: S104
)
def test_an_ipv4_address_is_stored_as_a_32_bit_number(address: str) -> None:
    stored = addresses.pack(address)
    assert -(1 << 31) <= int(stored) < 1 << 31
    assert addresses.unpack(stored) == address


@pytest.mark.parametrize("address", ["2001:db8::1", "::ffff:10.0.0.1", ""])
def test_other_addresses_are_stored_as_text_and_old_values_read_as_they_are(address: str) -> None:
    assert addresses.pack(address) == address
    assert addresses.unpack(address) == address
    assert addresses.unpack("10.1.2.3") == "10.1.2.3"  # stored before packing
    assert addresses.unpack(str(1 << 40)) == ""  # not anything pack writes
