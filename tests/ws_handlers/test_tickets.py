"""Connect tokens and chat tickets: what the experiment server mints and the service trusts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import tracemalloc
import zlib

import pytest

from ws_handlers.bot import Bot, Limits
from ws_handlers.tickets import (
    _ZLIB_JSON,
    Identity,
    TicketExpired,
    TicketInvalid,
    TicketTooLarge,
    TokenExpired,
    TokenInvalid,
    _keys,
    mint_ticket,
    mint_token,
    open_ticket,
    verify_token,
)

SECRET = "s" * 40
WHO = Identity("P1", "exp1", "sess1")
BOT = Bot("tutor", "gpt-4o-mini", "Be kind. TREATMENT-B", opening_message="Hi!", limits=Limits(max_chars=300))


def test_token_round_trip():
    assert verify_token(SECRET, mint_token(SECRET, WHO)) == WHO


def test_token_is_short_enough_for_a_url():
    assert len(mint_token(SECRET, WHO)) < 300


def test_token_expiry():
    token = mint_token(SECRET, WHO, ttl=60, now=time.time() - 120)
    with pytest.raises(TokenExpired):
        verify_token(SECRET, token)


def test_token_wrong_secret():
    with pytest.raises(TokenInvalid):
        verify_token("t" * 40, mint_token(SECRET, WHO))


@pytest.mark.parametrize("token", [None, "", 42, "a.b.c", "x" * 3000, "é.é.é"])
def test_token_garbage(token):
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, token)


def test_a_ticket_does_not_pass_for_a_token_nor_the_reverse():
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, mint_ticket(SECRET, WHO, "main", BOT))
    with pytest.raises(TicketInvalid):
        open_ticket(SECRET, mint_token(SECRET, WHO))


def test_ticket_round_trip_and_secrecy():
    ticket = mint_ticket(SECRET, WHO, "main", BOT)
    opened = open_ticket(SECRET, ticket)
    assert opened.identity == WHO and opened.chat_key == "main" and opened.bot == BOT
    assert "TREATMENT" not in ticket and "gpt" not in ticket  # encrypted, not just signed


def test_ticket_expiry_and_tampering():
    old = mint_ticket(SECRET, WHO, "main", BOT, now=time.time() - 100)
    with pytest.raises(TicketExpired):
        open_ticket(SECRET, old, max_age=50)
    assert open_ticket(SECRET, old, max_age=500).chat_key == "main"
    ticket = mint_ticket(SECRET, WHO, "main", BOT)
    for i in (10, len(ticket) // 2, len(ticket) - 5):
        flipped = ticket[:i] + ("A" if ticket[i] != "A" else "B") + ticket[i + 1 :]
        with pytest.raises(TicketInvalid):
            open_ticket(SECRET, flipped)


@pytest.mark.parametrize("ticket", [None, "", 3, "gAAAAA", "not base64 !!", "x" * 70_000])
def test_ticket_garbage(ticket):
    with pytest.raises(TicketInvalid):
        open_ticket(SECRET, ticket)


def test_secrets_must_be_long():
    with pytest.raises(ValueError):
        mint_token("short", WHO)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 3},
        {"temperature": float("nan")},
        {"max_tokens": 0},
        {"max_tokens": True},
        {"name": ""},
        {"opening_message": ""},
        {"system_prompt": 5},
    ],
)
def test_bad_bots_are_refused_at_minting(kwargs):
    with pytest.raises(ValueError):
        Bot(**({"name": "b", "model": "m", "system_prompt": "p"} | kwargs))


@pytest.mark.parametrize("participant", ["", "with space", "x" * 65, "a/b"])
def test_bad_identities_are_refused(participant):
    with pytest.raises(ValueError):
        Identity(participant, "exp1", "sess1")


def test_the_experiment_server_can_mint_without_the_services_dependencies():
    """oTree imports the ticket module: it must not pull in openai, boto3, websockets or powertools."""
    code = (
        "import sys; import ws_handlers.tickets as t; "
        "heavy = {'openai', 'boto3', 'botocore', 'websockets', 'aws_lambda_powertools', 'aiohttp'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bots_must_be_valid_unicode():
    with pytest.raises(ValueError, match="system_prompt"):
        Bot("b", "m", "You are \ud800 broken")


def test_a_ticket_version_must_be_the_integer_1():
    payload = {"v": True, "p": "P1", "x": "exp1", "s": "sess1", "k": "main", "b": BOT.to_dict()}
    forged = _keys(SECRET.encode()).ticket.encrypt(json.dumps(payload).encode()).decode()
    with pytest.raises(TicketInvalid):
        open_ticket(SECRET, forged)


# -- tickets in one frame (issue 12): API Gateway closes the socket on a frame over 32 KB --------
FRAME_LIMIT = 32_768  #: API Gateway's, in bytes
SCRIPTS = {"cjk": (0x4E00, 0x9FFF), "cyrillic": (0x0410, 0x044F), "arabic": (0x0621, 0x064A)}


def random_text(script: str, length: int, seed: int = 12) -> str:
    """Letters drawn at random: text that compresses about as little as any in its script."""
    first, last = SCRIPTS[script]
    rng = random.Random(seed)
    return "".join(chr(rng.randint(first, last)) for _ in range(length))


def start_frame_bytes(ticket: str) -> int:
    """The `start` frame as the browser sends it: JSON.stringify({action, ticket})."""
    return len(json.dumps({"action": "start", "ticket": ticket}, separators=(",", ":")).encode())


def sealed(plaintext: bytes) -> str:
    """A ticket holding `plaintext`, sealed with the real key (what only the secret's holder can do)."""
    return _keys(SECRET.encode()).ticket.encrypt(plaintext).decode()


def payload(bot: Bot = BOT) -> dict:
    return {"v": 1, "p": "P1", "x": "exp1", "s": "sess1", "k": "main", "b": bot.to_dict()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_long_non_ascii_prompt_fits_in_one_frame_and_opens_to_the_same_bot(script):
    bot = Bot("tutor", "gpt-4o-mini", random_text(script, 6_000), opening_message=random_text(script, 500, seed=3))
    ticket = mint_ticket(SECRET, WHO, "main", bot)
    assert start_frame_bytes(ticket) <= FRAME_LIMIT
    opened = open_ticket(SECRET, ticket)
    assert opened.bot == bot and opened.identity == WHO and opened.chat_key == "main"


def test_the_longest_prompts_of_the_alphabetic_scripts_fit():
    """docs/protocol.md: Latin, Cyrillic or Arabic prompts fit up to the 20,000-character cap."""
    for script in ("cyrillic", "arabic"):
        bot = Bot("tutor", "gpt-4o-mini", random_text(script, 20_000))
        assert start_frame_bytes(mint_ticket(SECRET, WHO, "main", bot)) <= FRAME_LIMIT


def test_a_prompt_too_long_even_compressed_is_refused_at_minting_with_its_size():
    bot = Bot("tutor_zh", "gpt-4o-mini", random_text("cjk", 12_000))
    with pytest.raises(TicketTooLarge) as refused:
        mint_ticket(SECRET, WHO, "main", bot)
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert "'tutor_zh'" in message and "12,000 characters" in message and "36,000 bytes" in message
    assert f"{FRAME_LIMIT:,} bytes" in message


def test_a_ticket_minted_before_compression_still_opens():
    """Tickets live 24 h: those minted by the previous release (plain JSON, ASCII-escaped) still open."""
    bot = Bot("tutor", "gpt-4o-mini", "Ты — терпеливый учитель. 你好", opening_message="Привет!")
    old = sealed(json.dumps(payload(bot), separators=(",", ":")).encode())
    opened = open_ticket(SECRET, old)
    assert opened.bot == bot and opened.identity == WHO and opened.chat_key == "main"


def test_a_decompression_bomb_is_refused_without_being_inflated():
    bomb = sealed(_ZLIB_JSON + zlib.compress(b'{"v":1,"pad":"' + b" " * (16 * 2**20) + b'"}', 9))
    assert len(bomb) < FRAME_LIMIT  # small enough to arrive: only the bound on inflating stops it
    tracemalloc.start()
    try:
        with pytest.raises(TicketInvalid):
            open_ticket(SECRET, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20


@pytest.mark.parametrize(
    "plaintext",
    [
        _ZLIB_JSON + zlib.compress(json.dumps(payload()).encode())[:-6],  # truncated
        _ZLIB_JSON + zlib.compress(json.dumps(payload()).encode()) + b"{}",  # followed by data
        _ZLIB_JSON + b"not zlib at all",
        _ZLIB_JSON + zlib.compress(b"[1, 2]"),
        b"\x02" + zlib.compress(json.dumps(payload()).encode()),  # an unknown format
        b"",
    ],
    ids=["truncated", "trailing", "not_zlib", "not_an_object", "unknown_format", "empty"],
)
def test_malformed_ticket_contents_are_invalid_tickets(plaintext):
    assert open_ticket(SECRET, sealed(_ZLIB_JSON + zlib.compress(json.dumps(payload()).encode()))).bot == BOT
    with pytest.raises(TicketInvalid):
        open_ticket(SECRET, sealed(plaintext))
