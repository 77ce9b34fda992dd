"""Server lists as users write them: arguments, GEARMAN_SERVERS, IPv6 in brackets."""

from __future__ import annotations

import pytest

from gearmill.client.servers import format_address, parse_servers


def test_forms() -> None:
    assert parse_servers("a,b:4731, [::1]:4732,[fe80::1],::1") == [
        ("a", 4730),
        ("b", 4731),
        ("::1", 4732),
        ("fe80::1", 4730),
        ("::1", 4730),
    ]
    assert parse_servers(["a:1", "b:2,c"]) == [("a", 1), ("b", 2), ("c", 4730)]
    assert format_address(("::1", 4730)) == "[::1]:4730"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEARMAN_SERVERS", raising=False)
    monkeypatch.delenv("GEARMAN_SERVER", raising=False)
    assert parse_servers(None) == [("127.0.0.1", 4730)]
    monkeypatch.setenv("GEARMAN_SERVER", "one:1")
    assert parse_servers(None) == [("one", 1)]
    monkeypatch.setenv("GEARMAN_SERVERS", "two:2,three")
    assert parse_servers(None) == [("two", 2), ("three", 4730)]  # GEARMAN_SERVERS wins
    # a bad address names the variable: the code that failed never mentioned it
    monkeypatch.setenv("GEARMAN_SERVERS", "two:2,bad:x")
    with pytest.raises(ValueError) as e:
        parse_servers(None)
    assert str(e.value) == "$GEARMAN_SERVERS: 'bad:x': port 'x' is not a number"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host:port", "is not a number"),
        ("host:70000", "out of range"),
        ("[::1", "missing ']'"),
        ("[::1]4730", "expected ':port'"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_servers(text)
