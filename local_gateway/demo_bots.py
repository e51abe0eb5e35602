"""Bots for trying the service without an experiment server (the mint command, demos, load tests)."""

from __future__ import annotations

from ws_handlers.bot import Bot, Limits

BOTS: dict[str, Bot] = {
    "tutor": Bot(
        name="tutor",
        model="gpt-4o-mini",
        system_prompt="You are Ada, a patient maths tutor. Ask one question at a time and never give the answer outright.",
        temperature=0.7,
        max_tokens=300,
        opening_message="Hi, I'm Ada. What are you working on today?",
        limits=Limits(max_chars=1000, max_user_messages=30, max_tokens_per_chat=50_000),
    ),
    "skeptic": Bot(
        name="skeptic",
        model="gpt-4o-mini",
        system_prompt="You are Sam, a friendly sceptic. Question the participant's claims politely and ask for evidence.",
        temperature=0.9,
        max_tokens=300,
        limits=Limits(max_chars=1000, max_user_messages=30, max_tokens_per_chat=50_000),
    ),
}
