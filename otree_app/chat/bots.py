"""The bots of this experiment: defined here, on the oTree server, and nowhere else.

Each `Bot` is a treatment. It travels to the chat service only inside the encrypted chat
ticket: the participant's browser never sees its name, model or prompt. Session configs
(settings.py) name the bots they assign in `treatments`.
"""

from ws_handlers.bot import Bot, Limits

LIMITS = Limits(max_chars=1000, max_user_messages=20, max_tokens_per_chat=30_000)

BOTS = {
    bot.name: bot
    for bot in (
        Bot(
            name="ada_friendly",
            model="gpt-4o-mini",
            system_prompt=(
                "You are Ada, a warm and encouraging maths tutor. Praise effort, explain step by step, "
                "and keep every answer under 80 words."
            ),
            temperature=0.7,
            max_tokens=300,
            opening_message="Hi, I'm Ada. Which maths topic would you like to talk about?",
            limits=LIMITS,
        ),
        Bot(
            name="ada_socratic",
            model="gpt-4o-mini",
            system_prompt=(
                "You are Ada, a Socratic maths tutor. Never give the answer outright: answer with one "
                "guiding question at a time, and keep every answer under 60 words."
            ),
            temperature=0.4,
            max_tokens=200,
            opening_message="Hi, I'm Ada. Which maths topic would you like to talk about?",
            limits=LIMITS,
        ),
    )
}
