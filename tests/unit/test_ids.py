"""Identifier grammars (homeserver/core/ids.py): full-string matches, every class of character."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.core.errors import MatrixError
from homeserver.core.ids import (
    EventID,
    RoomAlias,
    RoomID,
    UserID,
    is_valid_device_id,
    is_valid_new_alias_localpart,
    is_valid_new_localpart,
    is_valid_server_name,
)

# One of each class of character no grammar of ours lets through (the alias grammar of the
# spec lets some in on receipt, see below).
BAD = {
    "newline": "\n",
    "carriage return": "\r",
    "tab": "\t",
    "NUL": "\x00",
    "space": " ",
    "DEL": "\x7f",
    "non-ASCII letter": "é",
    "non-ASCII space": "\u00a0",
    "line separator": "\u2028",
    "emoji": "\U0001f600",
    "colon": ":",
}

PARSERS = {
    "user": (UserID.parse, "@alice{}:example.org"),
    "room": (RoomID.parse, "!abc{}:example.org"),
    "event": (EventID.parse, "$abc{}"),
    "user server": (UserID.parse, "@alice:example.org{}"),
    "room server": (RoomID.parse, "!abc:example.org{}"),
    "alias server": (RoomAlias.parse, "#abc:example.org{}"),
}


@pytest.mark.parametrize("kind", PARSERS)
@pytest.mark.parametrize("char", BAD.values(), ids=list(BAD))
def test_parsers_refuse_every_bad_character(kind: str, char: str) -> None:
    parse, template = PARSERS[kind]
    assert parse(template.format(""))  # the template itself is valid
    if char == ":" and kind in ("room", "event", "room server"):
        return  # a colon is part of the opaque grammar (and ":port" of server names)
    for where in (template.format(char), template.format(char + "x")):
        with pytest.raises(MatrixError) as e:
            parse(where)
        assert e.value.code == "M_INVALID_PARAM"


@pytest.mark.parametrize("char", BAD.values(), ids=list(BAD))
def test_creation_grammars_refuse_every_bad_character(char: str) -> None:
    for check in (is_valid_new_localpart, is_valid_new_alias_localpart, is_valid_device_id):
        assert check("abc")
        if check is is_valid_new_alias_localpart and char in ("é", "\U0001f600"):
            # Aliases are for people to read: letters and symbols of any script are fine,
            # whitespace and control characters are not.
            assert check("abc" + char)
            continue
        if check is is_valid_device_id and char == ":":
            continue  # device IDs are opaque printable ASCII
        assert not check("abc" + char), (check, char)
        assert not check(char + "abc"), (check, char)
    assert is_valid_server_name("example.org:8448")
    assert not is_valid_server_name("example.org" + char)


def test_trailing_newline_is_not_a_match() -> None:
    """The finding of issue 16: ``$`` matched before a final newline."""
    assert not is_valid_new_localpart("nl-test-\n")
    assert not is_valid_server_name("localhost\n")
    for bad in ("@nl-test-\n:localhost", "@a:localhost\n", "!r:localhost\n", "$e\n"):
        with pytest.raises(MatrixError):
            (UserID.parse if bad[0] == "@" else RoomID.parse if bad[0] == "!" else EventID.parse)(
                bad
            )


def test_historical_and_alias_grammars_on_receipt() -> None:
    assert UserID.parse("@Alice!#$%&'()*+,-./;<=>?[]^_`{|}~:example.org")
    assert not is_valid_new_localpart("Alice")
    assert RoomAlias.parse("#café-ü:example.org")  # spec: any code point but ':' and NUL
    assert not is_valid_new_alias_localpart("a b")
    for bad in ("#a\x00b:example.org", "#:example.org", "#a:b:c", "# a:example.org"):
        with pytest.raises(MatrixError):
            RoomAlias.parse(bad)
    with pytest.raises(MatrixError):
        UserID.parse("@" + "a" * 250 + ":example.org")  # past 255 bytes


_LOCALPART = st.from_regex(r"[a-z0-9._=\-/+]{1,40}", fullmatch=True)
_HOST = st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(localpart=_LOCALPART, host=_HOST, port=st.none() | st.integers(1, 65535))
def test_valid_ids_parse(localpart: str, host: str, port: int | None) -> None:
    server = host if port is None else f"{host}:{port}"
    assert UserID.parse(f"@{localpart}:{server}").localpart == localpart
    assert UserID.parse(f"@{localpart}:{server}").server_name == server
    assert RoomAlias.parse(f"#{localpart}:{server}")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_any_text_parses_only_into_the_grammar(text: str) -> None:
    """Whatever is accepted is printable ASCII without space or ``:`` in the localpart."""
    printable = set(string.printable) - set(string.whitespace)
    for candidate in (f"@{text}:example.org", f"@a:{text}"):
        try:
            user_id = UserID.parse(candidate)
        except MatrixError:
            continue
        assert set(user_id) <= printable and ":" not in user_id.localpart
        assert is_valid_server_name(user_id.server_name)
    for parse, sigil in ((RoomID.parse, "!"), (EventID.parse, "$")):
        try:
            value = parse(sigil + text)
        except MatrixError:
            continue
        assert set(value) <= printable
    if is_valid_new_localpart(text):
        assert set(text) <= set(string.ascii_lowercase + string.digits + "._=-/+")
