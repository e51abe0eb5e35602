"""Connect tokens and chat tickets, fuzzed: anything but an intact credential minted with the
shared secret is refused with a CredentialError (never another exception), and $connect
answers 401/403 without writing anything, or 200 only for a valid token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import event as _hypothesis_event
from hypothesis import strategies as st

from local_gateway.lambda_context import LambdaContext
from ws_handlers import connect, tickets
from ws_handlers.bot import Bot, Limits
from ws_handlers.tickets import (
    CLOCK_SKEW_SECONDS,
    TOKEN_AUDIENCE,
    CredentialError,
    Identity,
    Ticket,
    TicketExpired,
    TicketInvalid,
    TokenExpired,
    TokenInvalid,
    mint_ticket,
    mint_token,
    open_ticket,
    verify_token,
)

from harness import ORIGIN

SECRET = secrets.token_urlsafe(48)
KEYS = tickets._keys(SECRET.encode())  # the derived keys, to mint malformed credentials "legitimately"
WHO = Identity("P1", "exp1", "sess1")
BOT = Bot("tutor", "offline-tutor", "Be kind. TREATMENT-B", opening_message="Hi!", limits=Limits(max_chars=300))
TOKEN = mint_token(SECRET, WHO)  # valid for 6 h: longer than any run of this file
TICKET = mint_ticket(SECRET, WHO, "main", BOT)
CREDENTIALS = {"token": TOKEN, "ticket": TICKET}
ALL_ERRORS = (TokenInvalid, TokenExpired, TicketInvalid, TicketExpired)
MAX_AGE = tickets.DEFAULT_TICKET_MAX_AGE
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def event(label: str) -> None:
    try:
        _hypothesis_event(label)
    except Exception:  # outside a Hypothesis test
        pass


def outcome(kind: str, value: Any, **kw: Any) -> Any:
    """verify_token / open_ticket's result or the CredentialError it raised; anything else propagates."""
    try:
        if kind == "token":
            return verify_token(SECRET, value, **kw)
        return open_ticket(SECRET, value, **kw)
    except CredentialError as exc:
        assert type(exc) in ALL_ERRORS, type(exc)
        assert exc.code in ("invalid_token", "token_expired", "invalid_ticket", "ticket_expired")
        event(f"{kind}: {type(exc).__name__}")
        return exc


INVALID = {"token": TokenInvalid, "ticket": TicketInvalid}
EXPIRED = {"token": TokenExpired, "ticket": TicketExpired}


def _b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64e(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


def decoded(kind: str, value: str) -> Any:
    """The bytes a credential stands for, or None when it does not decode (for malleability checks)."""
    try:
        if kind == "token":
            return tuple(_b64d(part) for part in value.split("."))
        return base64.urlsafe_b64decode(value.encode())
    except (binascii.Error, ValueError):
        return None


def assert_refused_unless_same_bytes(kind: str, original: str, modified: str) -> None:
    """A modified credential is refused, unless it only re-spells the same bytes.

    Base64's last character carries unused bits: two spellings can decode to the very same
    signed bytes. Such a twin opens to exactly the original; anything else must be refused.
    """
    result = outcome(kind, modified)
    if isinstance(result, CredentialError):
        assert isinstance(result, INVALID[kind]), result  # a fresh credential never reads as expired
        return
    assert decoded(kind, modified) == decoded(kind, original), (original, modified)
    assert result == outcome(kind, original)
    event(f"{kind}: same bytes, other spelling")


# -- strategies -------------------------------------------------------------------------------
ODD = ["\ud800", "\udfff", "\u202e", "\x00", "\ufeff", "\U0001f600", "e\u0301", "\u2028", " ", "\n", "=", ".", "é"]
odd_text = st.lists(st.one_of(st.sampled_from(ODD), st.characters()), max_size=40).map("".join)
b64_alphabet = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=300)
garbage = st.one_of(
    st.text(max_size=300),
    odd_text,
    st.characters(categories=["Cs"]).map(lambda c: "eyJ" + c),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape")),  # invalid UTF-8, as a str
    st.binary(max_size=300).map(_b64e),  # valid base64 of garbage
    st.binary(max_size=300).map(lambda b: _b64e(b, pad=True)),
    st.binary(min_size=1, max_size=300).map(lambda b: base64.b64encode(b).decode()),  # +/ alphabet
    st.binary(max_size=200).map(lambda b: _b64e(b"\x80" + b"\x00" * 4 + int(time.time()).to_bytes(4, "big") + b, pad=True)),
    st.binary(max_size=200).map(lambda b: _b64e(b"\x80" + b"\x00" * 8 + b, pad=True)),  # Fernet-shaped, epoch 0
    st.tuples(st.binary(max_size=60), st.binary(max_size=60), st.binary(max_size=40)).map(lambda t: ".".join(map(_b64e, t))),
    st.tuples(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), b64_alphabet, b64_alphabet).map(
        lambda t: _b64e(json.dumps({"alg": "HS256", **t[0]}).encode()) + "." + t[1] + "." + t[2]
    ),
    b64_alphabet,
    st.sampled_from([2047, 2048, 2049, 65_535, 65_536, 65_537]).map(lambda n: "A" * n),
    st.sampled_from(["", ".", "..", "a.b.c", "a.b.", ".b.c", "=", "==", "gAAAAA", "gAAAAA==", "null", "None"]),
)
non_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=50),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.just(TOKEN.encode()), st.just(TICKET.encode()), st.just(bytearray(TICKET.encode())),
)


@settings(max_examples=200, deadline=None, database=None)
@given(value=st.one_of(garbage, non_strings))
def test_arbitrary_values_are_refused(value):
    for kind in ("token", "ticket"):
        result = outcome(kind, value)
        assert isinstance(result, INVALID[kind]), (kind, value, result)


@settings(max_examples=200, deadline=None, database=None)
@given(kind=st.sampled_from(["token", "ticket"]), cut=st.tuples(st.integers(0, 5000), st.integers(0, 5000)))
def test_truncations_and_slices_are_refused(kind, cut):
    original = CREDENTIALS[kind]
    start, end = sorted(c % (len(original) + 1) for c in cut)
    assume((start, end) != (0, len(original)))
    for modified in (original[start:end], original[:start] + original[end:]):
        if modified != original:
            assert isinstance(outcome(kind, modified), INVALID[kind]), (start, end)


@settings(max_examples=200, deadline=None, database=None)
@given(
    kind=st.sampled_from(["token", "ticket"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 7), st.integers(0, 20)), min_size=1, max_size=4),
)
@example(kind="token", flips=[(0, 0, 18), (0, 0, 20)])  # once raised ValueError from chr(), out of range
def test_bit_flips_are_refused(kind, flips):
    original = CREDENTIALS[kind]
    chars = list(original)
    for index, bit, high in flips:
        i = index % len(chars)
        # mostly ASCII flips, some beyond; two high flips of one character can leave Unicode's range
        # (0x40065 ^ 1 << 20): wrapped back into it (`assume` below drops a result equal to the original)
        chars[i] = chr((ord(chars[i]) ^ (1 << (bit if high < 18 else high))) % 0x110000)
    modified = "".join(chars)
    assume(modified != original)
    assert_refused_unless_same_bytes(kind, original, modified)


@settings(max_examples=150, deadline=None, database=None)
@given(
    kind=st.sampled_from(["token", "ticket"]),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 7)), min_size=1, max_size=3),
    segment=st.integers(0, 2),
)
def test_flips_of_the_signed_bytes_are_refused(kind, flips, segment):
    """Tampering below the encoding (a flipped bit in the bytes, then encoded cleanly)."""
    if kind == "ticket":
        raw = bytearray(base64.urlsafe_b64decode(TICKET))
        for index, bit in flips:
            raw[index % len(raw)] ^= 1 << bit
        modified = _b64e(bytes(raw), pad=True)
    else:
        parts = TOKEN.split(".")
        raw = bytearray(_b64d(parts[segment]))
        for index, bit in flips:
            raw[index % len(raw)] ^= 1 << bit
        parts[segment] = _b64e(bytes(raw))
        modified = ".".join(parts)
    assume(modified != CREDENTIALS[kind])
    assert isinstance(outcome(kind, modified), INVALID[kind])


# -- tokens signed with the real key, with wrong claims or headers ------------------------------
def _claims(now: float) -> dict[str, Any]:
    return {"sub": "P1", "xp": "exp1", "ses": "sess1", "aud": TOKEN_AUDIENCE, "iat": int(now), "exp": int(now) + 3600}


def _hs256(claims: dict[str, Any], headers: dict[str, Any] | None = None, key: bytes | None = None) -> str:
    return jwt.encode(claims, KEYS.token if key is None else key, algorithm="HS256", headers=headers)


bad_codes = st.one_of(
    st.sampled_from(["", " ", "a b", "x" * 65, "P1\n", "P1/2", "é", "\ud800", "P1\x00", "*", "P1 "]),
    st.none(), st.integers(), st.booleans(), st.lists(st.just("P1"), max_size=2), st.dictionaries(st.just("a"), st.just("P1")),
)
junk_json = st.one_of(st.none(), st.text(max_size=10).filter(lambda s: not s.strip().isdigit()), st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(float("nan")), st.just(float("inf")))
#: (label, how to change the claims, the outcome it must lead to)
MUTATIONS = st.one_of(
    st.sampled_from(["sub", "xp", "ses", "exp", "aud"]).map(lambda k: ("drop " + k, lambda c, k=k: c.pop(k, None), TokenInvalid)),
    st.tuples(st.sampled_from(["sub", "xp", "ses"]), bad_codes).map(
        lambda t: (f"bad {t[0]}", lambda c, t=t: c.__setitem__(t[0], t[1]), TokenInvalid)
    ),
    st.one_of(st.text(max_size=20).filter(lambda a: a != TOKEN_AUDIENCE), st.integers(), st.none(),
              st.lists(st.text(max_size=5).filter(lambda a: a != TOKEN_AUDIENCE), max_size=3),
              st.just(TOKEN_AUDIENCE.upper()), st.just(TOKEN_AUDIENCE + " "), st.just([TOKEN_AUDIENCE, 5])).map(
        lambda a: ("bad aud", lambda c, a=a: c.__setitem__("aud", a), TokenInvalid)
    ),
    st.integers(CLOCK_SKEW_SECONDS + 2, 10**9).map(
        lambda ago: ("expired", lambda c, ago=ago: c.__setitem__("exp", int(time.time()) - ago), TokenExpired)
    ),
    junk_json.map(lambda v: ("junk exp", lambda c, v=v: c.__setitem__("exp", v), (TokenInvalid, TokenExpired))),
    st.integers(CLOCK_SKEW_SECONDS + 5, 10**9).map(
        lambda ahead: ("future iat", lambda c, ahead=ahead: c.__setitem__("iat", int(time.time()) + ahead), TokenInvalid)
    ),
    st.integers(CLOCK_SKEW_SECONDS + 5, 10**9).map(
        lambda ahead: ("future nbf", lambda c, ahead=ahead: c.__setitem__("nbf", int(time.time()) + ahead), TokenInvalid)
    ),
    junk_json.map(lambda v: ("junk iat", lambda c, v=v: c.__setitem__("iat", v), TokenInvalid)),
)
harmless = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("sub", "xp", "ses", "aud", "exp", "iat", "nbf")),
    st.one_of(st.text(max_size=10), st.integers(-5, 5), st.none()), max_size=3,
)


@settings(max_examples=200, deadline=None, database=None)
@given(mutations=st.lists(MUTATIONS, max_size=3), extra=harmless)
def test_tokens_with_wrong_or_missing_claims_are_refused(mutations, extra):
    claims = _claims(time.time()) | extra
    for _, mutate, _expected in mutations:
        mutate(claims)
    result = outcome("token", _hs256(claims))
    if not mutations:  # only harmless extra claims: still a valid token
        assert result == WHO
        return
    assert isinstance(result, CredentialError), (mutations, claims)
    if len(mutations) == 1:
        label, _, expected = mutations[0]
        assert isinstance(result, expected), (label, claims, result)


def _forge(header: dict[str, Any], claims: dict[str, Any], sign) -> str:
    signing_input = _b64e(json.dumps(header).encode()) + "." + _b64e(json.dumps(claims).encode())
    return signing_input + "." + _b64e(sign(signing_input.encode()))


def _hmac(key: bytes, digest=hashlib.sha256):
    return lambda data: hmac.new(key, data, digest).digest()


FORGERIES: dict[str, Any] = {
    "alg none, no signature": lambda c: jwt.encode(c, None, algorithm="none"),
    "alg none, real HS256 signature": lambda c: _forge({"alg": "none", "typ": "JWT"}, c, _hmac(KEYS.token)),
    "alg None": lambda c: _forge({"alg": "None"}, c, lambda d: b""),
    "alg hs256 (lower case)": lambda c: _forge({"alg": "hs256"}, c, _hmac(KEYS.token)),
    "no alg": lambda c: _forge({"typ": "JWT"}, c, _hmac(KEYS.token)),
    "HS512 with the real key": lambda c: jwt.encode(c, KEYS.token, algorithm="HS512"),
    "HS384 with the real key": lambda c: jwt.encode(c, KEYS.token, algorithm="HS384"),
    "RS256": lambda c: jwt.encode(c, _RSA, algorithm="RS256"),
    "ES256": lambda c: jwt.encode(c, _EC, algorithm="ES256"),
    "RS256 header, HMAC signature": lambda c: _forge({"alg": "RS256"}, c, _hmac(KEYS.token)),
    "HS256 with the raw secret": lambda c: _hs256(c, key=SECRET.encode()),
    "HS256 with the ticket's signing key": lambda c: _hs256(c, key=KEYS.ticket._signing_key),
    "HS256 with the ticket's encryption key": lambda c: _hs256(c, key=KEYS.ticket._encryption_key),
    "HS256 with another secret's key": lambda c: _hs256(c, key=tickets._keys(b"x" * 40).token),
    "HS256 with an empty key": lambda c: _forge({"alg": "HS256"}, c, _hmac(b"")),
    "RS256 with jku and kid headers": lambda c: jwt.encode(c, _RSA, algorithm="RS256",
                                                      headers={"jku": "https://evil.example/jwks", "kid": "../../x"}),
}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # forging with short keys on purpose
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_tokens_are_refused(forgery):
    token = FORGERIES[forgery](_claims(time.time()))
    assert isinstance(outcome("token", token), TokenInvalid)


@settings(max_examples=100, deadline=None, database=None)
@given(headers=st.dictionaries(st.sampled_from(["kid", "typ", "cty", "x5u", "jku", "zip", "foo"]), st.text(max_size=10), max_size=3))
def test_extra_header_fields_do_not_change_the_verdict(headers):
    """The key and the algorithm decide, not what else the header says."""
    result = outcome("token", _hs256(_claims(time.time()), headers=headers))
    assert result == WHO or isinstance(result, TokenInvalid)  # never another identity, never a crash


@settings(max_examples=150, deadline=None, database=None)
@given(
    offset=st.one_of(st.integers(-10**9, 10**9), st.integers(-200, 200)),
    ttl=st.one_of(st.integers(1, 10**7), st.integers(1, 400)),
)
def test_token_times(offset, ttl):
    """Minted `offset` seconds from now (a clock ahead or behind), valid for `ttl` seconds."""
    now = time.time()
    issued, expires = int(now + offset), int(now + offset) + ttl
    token = mint_token(SECRET, WHO, ttl=ttl, now=now + offset)
    # away from the edges by half a minute, so the test's own time (a busy machine may pause it) does not matter
    assume(abs(issued - (now + CLOCK_SKEW_SECONDS)) > 30 and abs(expires - (now - CLOCK_SKEW_SECONDS)) > 30)
    result = outcome("token", token)
    if issued > now + CLOCK_SKEW_SECONDS:
        assert isinstance(result, TokenInvalid)  # future-dated beyond the tolerated skew
    elif expires <= now - CLOCK_SKEW_SECONDS:
        assert isinstance(result, TokenExpired)
    else:
        assert result == WHO
        event("token: valid within the clock skew" if issued > now or expires <= now else "token: valid")


# -- tickets: Fernet tokens minted with the derived key, with bad contents ------------------------
def _payload(**changes: Any) -> dict[str, Any]:
    payload = {"v": 1, "p": "P1", "x": "exp1", "s": "sess1", "k": "main", "b": BOT.to_dict()}
    payload.update(changes)
    return payload


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
bad_bot_fields = st.sampled_from(
    [
        ("name", ""), ("name", "x" * 65), ("name", 1), ("name", None),
        ("model", ""), ("model", "m" * 129), ("model", None), ("model", ["gpt"]),
        ("system_prompt", 5), ("system_prompt", None), ("system_prompt", "x" * 20_001),
        ("temperature", -0.1), ("temperature", 2.01), ("temperature", "0.5"), ("temperature", None),
        ("temperature", True), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", 10**400),
        ("max_tokens", 0), ("max_tokens", 8193), ("max_tokens", True), ("max_tokens", 1.5), ("max_tokens", "10"),
        ("max_tokens", 10**400), ("opening_message", ""), ("opening_message", "x" * 4001), ("opening_message", 5),
        ("limits", "x"), ("limits", [1]), ("limits", {"max_chars": 0}), ("limits", {"max_chars": True}),
        ("limits", {"max_chars": "10"}), ("limits", {"unknown": 1}), ("limits", {"max_user_messages": -1}),
        ("limits", {"max_tokens_per_chat": 1.5}), ("unknown_field", 1), ("__class__", "x"),
    ]
)
bad_payloads = st.one_of(
    st.sampled_from([0, 2, "1", None, [], {}, -1, 1.5, "v1"]).map(lambda v: ("bad v", _payload(v=v))),
    st.tuples(st.sampled_from(["p", "x", "s", "k"]), bad_codes).map(lambda t: (f"bad {t[0]}", _payload(**{t[0]: t[1]}))),
    st.sampled_from(["v", "p", "x", "s", "k", "b"]).map(
        lambda k: (f"drop {k}", {key: v for key, v in _payload().items() if key != k})
    ),
    st.one_of(st.none(), st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2)).map(
        lambda b: ("bot not an object", _payload(b=b))
    ),
    bad_bot_fields.map(lambda f: (f"bad bot {f[0]}", _payload(b=BOT.to_dict() | {f[0]: f[1]}))),
    st.sampled_from(["name", "model", "system_prompt"]).map(
        lambda f: (f"bot without {f}", _payload(b={k: v for k, v in BOT.to_dict().items() if k != f}))
    ),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("not an object", v)),
    st.dictionaries(st.text(max_size=3), json_values, max_size=4).map(lambda d: ("random object", d)),
)


def _raw_payloads() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.one_of(
        st.binary(max_size=300).map(lambda b: ("bytes", b)),
        st.text(max_size=100).map(lambda t: ("text", t.encode("utf-8", "surrogatepass"))),
        st.integers(1, 40_000).map(lambda d: ("deep", b"[" * d + b"]" * d)),
        st.integers(1, 40_000).map(lambda d: ("deep bot", json.dumps(_payload(b=None)).replace("null", "[" * d + "]" * d).encode())),
        st.just(("surrogate in p", json.dumps(_payload(p="\ud800")).encode())),
        st.just(("NaN temperature", json.dumps(_payload(b=BOT.to_dict() | {"temperature": float("nan")})).encode())),
        st.just(("invalid UTF-8", b'{"v":1,"p":"P1\xff"}')),
    )


@settings(max_examples=200, deadline=None, database=None)
@given(case=st.one_of(bad_payloads.map(lambda c: (c[0], json.dumps(c[1]).encode())), _raw_payloads()))
def test_tickets_with_bad_contents_are_refused(case):
    label, data = case
    event(label)
    result = outcome("ticket", KEYS.ticket.encrypt(data).decode())
    assert isinstance(result, TicketInvalid), (label, result)


def test_an_intact_payload_opens():
    """The positive control for the test above: the same minting path, a good payload."""
    opened = outcome("ticket", KEYS.ticket.encrypt(json.dumps(_payload()).encode()).decode())
    assert isinstance(opened, Ticket) and opened.identity == WHO and opened.bot == BOT


@settings(max_examples=150, deadline=None, database=None)
@given(offset=st.one_of(st.integers(-10**9, 10**9), st.integers(-MAX_AGE - 200, -MAX_AGE + 200), st.integers(-200, 200)))
def test_ticket_times(offset):
    now = time.time()
    issued = int(now + offset)
    assume(abs(issued + MAX_AGE - now) > 3 and abs(issued - now - CLOCK_SKEW_SECONDS) > 3)
    result = outcome("ticket", mint_ticket(SECRET, WHO, "main", BOT, now=now + offset), now=now)
    if issued > now + CLOCK_SKEW_SECONDS:
        assert isinstance(result, TicketInvalid)  # from the future beyond the tolerated skew
    elif issued + MAX_AGE < now:
        assert isinstance(result, TicketExpired)
    else:
        assert isinstance(result, Ticket) and result.identity == WHO


@pytest.mark.parametrize(
    "kind, credential",
    [
        ("token", TICKET),
        ("ticket", TOKEN),
        ("ticket", Fernet(base64.urlsafe_b64encode(KEYS.token)).encrypt(json.dumps(_payload()).encode()).decode()),
        ("ticket", Fernet(base64.urlsafe_b64encode(SECRET.encode()[:32])).encrypt(json.dumps(_payload()).encode()).decode()),
        ("ticket", mint_ticket("y" * 40, WHO, "main", BOT)),
        ("token", mint_token("y" * 40, WHO)),
        ("ticket", TICKET + "\n"),
        ("ticket", " " + TICKET),
        ("token", TOKEN + "."),
        ("token", TOKEN + ".x"),
        ("token", TOKEN.replace(".", "..", 1)),
    ],
)
def test_credentials_of_the_wrong_kind_or_secret_are_refused(kind, credential):
    assert isinstance(outcome(kind, credential), INVALID[kind])


@pytest.mark.parametrize("padding", ["", "=", "==", "===", "====", "=" * 40])
def test_re_padded_tickets_open_only_as_themselves(padding):
    """Base64 padding is not signed: a re-padded ticket may open, but only to the same bytes."""
    assert_refused_unless_same_bytes("ticket", TICKET, TICKET.rstrip("=") + padding)


# -- $connect with fuzzed query strings and headers ---------------------------------------------
TOKEN_KINDS = ["valid", "valid other participant", "none", "empty", "garbage", "flipped", "truncated",
               "expired", "future", "other secret", "ticket"]
origins = st.one_of(
    st.just(ORIGIN), st.just(None),
    st.sampled_from([ORIGIN + "/", ORIGIN.upper(), "null", ORIGIN + ".evil.net", ORIGIN.replace("https", "http"),
                     " " + ORIGIN, ORIGIN + "\x00", ORIGIN + ":443", "https://evil.example", "*", ""]),
    st.text(max_size=30),
)
header_noise = st.dictionaries(
    st.sampled_from(["Host", "User-Agent", "X-Forwarded-For", "Cookie", "Sec-WebSocket-Key", "X-Origin", "Origin ",
                     "Referer", "Authorization"]),
    st.text(max_size=30), max_size=4,
)


@st.composite
def connect_requests(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "token_kind": draw(st.sampled_from(TOKEN_KINDS)),
        "garbage": draw(st.one_of(garbage, odd_text)),
        "cut": draw(st.integers(min_value=1)),
        "flips": draw(st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 6)), min_size=1, max_size=3)),
        "token_param": draw(st.sampled_from(["token", "token", "token", "Token", "TOKEN", "token ", "tok"])),
        "extra_params": draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k.lower().strip() != "token"),
                                             st.text(max_size=20), max_size=3)),
        "no_query": draw(st.booleans()) and draw(st.booleans()),
        "origin": draw(origins),
        "origin_header": draw(st.sampled_from(["Origin", "origin", "ORIGIN"])),
        "headers": draw(st.one_of(st.none(), header_noise)),
    }


def _token_for(harness, request: dict[str, Any], good: str) -> str | None:
    kind = request["token_kind"]
    if kind == "valid":
        return good
    if kind == "valid other participant":
        return harness.token("P-2.b:c_d")
    if kind == "none":
        return None
    if kind == "empty":
        return ""
    if kind == "garbage":
        return request["garbage"]
    if kind == "truncated":
        return good[: request["cut"] % len(good)]
    if kind == "flipped":
        chars = list(good)
        for index, bit in request["flips"]:
            chars[index % len(chars)] = chr(ord(chars[index % len(chars)]) ^ (1 << bit))
        return "".join(chars)
    if kind == "expired":
        return harness.token("P1", ttl=60, now=time.time() - 3600)
    if kind == "future":
        return harness.token("P1", now=time.time() + 3600)
    if kind == "other secret":
        return mint_token("z" * 48, harness.identity("P1"))
    return harness.ticket("P1")


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    # one moto-backed deployment for every example: each compares the tables with just before
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=connect_requests())
def test_connect_with_fuzzed_query_and_headers(harness, request):
    good = harness.token("P1")  # minted once: another second's token has other bytes
    token = _token_for(harness, request, good)
    query: dict[str, str] | None = None
    if not request["no_query"]:
        query = dict(request["extra_params"])
        if token is not None:
            query[request["token_param"]] = token
    headers = None
    if request["headers"] is not None or request["origin"] is not None:
        headers = dict(request["headers"] or {})
        if request["origin"] is not None:
            headers[request["origin_header"]] = request["origin"]
    cid = "fz-" + uuid.uuid4().hex[:12]
    event_ = {
        "requestContext": harness._context(cid, "$connect", "CONNECT"),
        "headers": headers,
        "queryStringParameters": query,
        "isBase64Encoded": False,
    }
    before = {t: sorted(json.dumps(i, sort_keys=True) for i in harness.table_items(t)) for t in ("chats", "conns")}

    response = connect.handler(event_, LambdaContext("connect"))  # must not raise

    after = {t: sorted(json.dumps(i, sort_keys=True) for i in harness.table_items(t)) for t in ("chats", "conns")}
    status = response["statusCode"]
    # what the protocol says should happen
    origin = next((v for k, v in (headers or {}).items() if k.lower() == "origin"), None)
    sent = (query or {}).get("token")
    try:
        identity = verify_token(harness.secret, sent)
    except CredentialError:
        identity = None
    if origin is not None and origin != ORIGIN:
        expected = 403
    elif identity is None:
        expected = 401
    else:
        expected = 200
    event(f"{request['token_kind']} -> {status}")
    assert status == expected, (request, response)
    if status != 200:
        assert response["body"] in ("invalid_token", "token_expired", "origin_not_allowed", "origin_required")
        assert after == before, "a refused handshake wrote something"
        return
    # accepted: the token is intact (or re-spells the same bytes), and only this connection is stored
    assert request["token_kind"] in ("valid", "valid other participant") or (
        request["token_kind"] == "flipped" and decoded("token", sent) == decoded("token", good)
    ), request
    assert after["chats"] == before["chats"]
    added = [json.loads(i) for i in set(after["conns"]) - set(before["conns"])]
    assert len(added) == 1 and len(after["conns"]) == len(before["conns"]) + 1
    assert added[0]["connection_id"]["S"] == cid and added[0]["participant"]["S"] == identity.participant
