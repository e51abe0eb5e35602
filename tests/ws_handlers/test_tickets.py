"""Connect tokens and chat tickets: what the experiment server mints and the service trusts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ws_handlers.bot import Bot, Limits
from ws_handlers.tickets import (
    Identity,
    TicketExpired,
    TicketInvalid,
    TokenExpired,
    TokenInvalid,
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
    import json

    from ws_handlers.tickets import _keys

    payload = {"v": True, "p": "P1", "x": "exp1", "s": "sess1", "k": "main", "b": BOT.to_dict()}
    forged = _keys(SECRET.encode()).ticket.encrypt(json.dumps(payload).encode()).decode()
    with pytest.raises(TicketInvalid):
        open_ticket(SECRET, forged)
