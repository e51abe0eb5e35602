"""Deterministic, plausible replies for the offline model.

The reply speaks as the persona named in the system prompt, picks up the participant's
own words from the last user message, and varies with the conversation (turn count and
a hash of all messages), so a demo feels alive while tests can rely on
"same messages -> same reply". Nothing here is random and nothing does I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Words and single punctuation marks, each with the whitespace before it, so that
# "".join(tokenize(text)) == text for replies (which never end in whitespace).
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
_WORD = re.compile(r"[^\W\d_][\w'-]*")


def tokenize(text: str) -> list[str]:
    """Split text into tokens: words and punctuation marks, each with leading whitespace."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts (text parts kept)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


# ---------------------------------------------------------------- persona

_ARTICLE_OR_FILLER = r"(?:A|An|The|Not|Now|Here|In|On|Going|Always|Very|So|To)\b"
_YOU_ARE = r"(?i:\byou are|\byou're|\bact as|\bplay)\s+"
_CAPITALISED = r"[A-Z][\w'-]*"
_NAME_PATTERNS = [
    re.compile(rf"(?i:\byour name is|\byou are called|\byou are named|\bcall yourself)\s+({_CAPITALISED})"),
    re.compile(rf"{_YOU_ARE}(?!{_ARTICLE_OR_FILLER})({_CAPITALISED}(?: {_CAPITALISED})?)(?=[\s,.;:!]|$)"),
]
# "You are [Name, ]a/an/the role ...": the role runs to the end of the clause.
_ROLE = re.compile(rf"{_YOU_ARE}(?:{_CAPITALISED}(?: {_CAPITALISED})*\s*,?\s+)?((?i:an?|the)\s+[^.,;:!?\n]+)")
_ROLE_CUT = re.compile(r"\s+(?:who|that|which|whose|and you|and your)\b.*$", re.I)


@dataclass(frozen=True)
class Persona:
    name: str | None = None  #: "Ada"
    role: str | None = None  #: "a friendly tutor"

    def intro(self) -> str:
        """How the bot presents itself: "I'm Ada, a friendly tutor"."""
        if self.name and self.role:
            return f"I'm {self.name}, {self.role}"
        if self.name:
            return f"I'm {self.name}"
        if self.role:
            return f"I'm {self.role}"
        return "I'm your assistant"

    def label(self) -> str:
        """A short self-reference for later turns: "Ada" or "a friendly tutor"."""
        return self.name or self.role or "your assistant"


def persona_from(system_prompt: str) -> Persona:
    """Read a name and a role from prompts like "You are Ada, a friendly tutor who ..."."""
    name = None
    for pattern in _NAME_PATTERNS:
        if m := pattern.search(system_prompt):
            name = m.group(1).rstrip("'-")
            break
    role = None
    if m := _ROLE.search(system_prompt):
        words = _ROLE_CUT.sub("", m.group(1).strip()).split()[:6]
        words[0] = words[0].lower()
        role = " ".join(words) if len(words) > 1 else None
    return Persona(name, role)


# ---------------------------------------------------------------- the participant's words

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further get got had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's i i'd
    i'll i'm i've if in into is isn't it it's its itself just know let's like make many may me
    might more most much must mustn't my myself need no nor not now of off on once only or other
    ought our ours ourselves out over own please really same say shan't she she'd she'll she's
    should shouldn't so some such tell than thank thanks that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've think this those
    through to too under until up us very want was wasn't we we'd we'll we're we've well were
    weren't what what's when when's where where's which while who who's whom why why's will with
    won't would wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves
    hello hi hey okay ok sure thing things something anything going one especially actually
    basically probably usually always never often sometimes maybe perhaps still even quite rather
    already almost especially exactly definitely certainly literally totally""".split()
)


def salient_words(text: str, limit: int = 3) -> list[str]:
    """The longest non-stopwords of `text`, at most `limit`, in the order they appear."""
    seen: dict[str, tuple[int, str]] = {}
    for position, word in enumerate(_WORD.findall(text)):
        word = word.strip("'-")
        key = word.lower()
        if len(key) < 3 or key in _STOPWORDS or key in seen:
            continue
        seen[key] = (position, word)
    best = sorted(seen.values(), key=lambda pw: (-len(pw[1]), pw[0]))[:limit]
    return [word for _, word in sorted(best)]


def short_quote(text: str, anchor: str | None, max_words: int = 7) -> str | None:
    """A short phrase of the participant's, verbatim but with whitespace collapsed."""
    words = text.split()
    if not words:
        return None
    if len(words) > max_words:
        start = 0
        if anchor:
            for i, w in enumerate(words):
                if anchor.lower() in w.lower():
                    start = max(0, i - 2)
                    break
        words = words[start : start + max_words]
    phrase = " ".join(words).strip(" .,;:!?\"'")
    return f'"{phrase}"' if phrase else None


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


# ---------------------------------------------------------------- templates

_OPENERS_FIRST = [
    "Hello! {intro}, and I'm glad you're here.",
    "Hi there, {intro}.",
    "Welcome! {intro}, so let's get started.",
    "Nice to meet you. {intro}, and I'm happy to help.",
]
_OPENERS_LATER = [
    "Thanks for following up; {label} here again.",
    "Good point. Speaking as {label}, I'd like to add something.",
    "Let's keep going, this is {label} picking up where we left off.",
    "That's helpful to know, and as {label} I have a few thoughts.",
]
_ABOUT_QUOTE = [
    "You said {quote}, which is a good place to start.",
    "When you mention {quote}, the first thing that comes to mind is {topic}.",
    "I noticed you wrote {quote}, and I think it is worth looking at {topic} more closely.",
]
_ABOUT_TOPIC = [
    "I've been thinking about {topic}, and there is more to it than it first seems.",
    "Your message about {topic} raises a few interesting points.",
    "Let's look at {topic} step by step, starting with what matters most to you.",
]
_NO_TOPIC = [
    "I'm not sure I caught what you meant, but I'm listening.",
    "Could you say a little more so I can help properly?",
]
_DEVELOP = [
    "One way to see it is to compare a simple case with a harder one and notice what changes.",
    "It often helps to start from a concrete example and then generalise from there.",
    "Many people find the details become clearer once the main idea is in place.",
    "There is no single right answer here, but some answers are better supported than others.",
]
_TURN = [
    "Since this is the start of our conversation, I'll keep things simple.",
    "This is message {turn} of our conversation, so I'll build on what we've covered.",
]
_QUESTIONS = [
    "What made you think about {key}?",
    "Would an example about {key} help?",
    "How would you put {key} in your own words?",
    "Which part of {key} would you like to explore next?",
]
_CLOSERS = ["I hope that helps.", "Let me know what you think.", "Tell me if anything is unclear."]


def _digest(messages: Sequence[dict[str, Any]]) -> int:
    canonical = json.dumps(
        [[m.get("role"), content_text(m.get("content"))] for m in messages], ensure_ascii=False
    )
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")


def write_reply(messages: Sequence[dict[str, Any]]) -> str:
    """The full reply to a conversation (before any max_tokens cut); deterministic."""
    system = " ".join(
        content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    persona = persona_from(system)
    user_texts = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    turn = max(1, len(user_texts))
    last = user_texts[-1] if user_texts else ""
    words = salient_words(last)
    quote = short_quote(last, words[0] if words else None)
    h = _digest(messages)

    def pick(options: Sequence[str], shift: int) -> str:
        return options[(h >> shift) % len(options)]

    values = {
        "intro": persona.intro(),
        "label": persona.label(),
        "quote": quote or "",
        "topic": _join(words),
        "key": words[0] if words else "",
        "turn": turn,
    }
    sentences = [pick(_OPENERS_FIRST if turn == 1 else _OPENERS_LATER, 0)]
    if words and quote and (h >> 8) % 2:
        sentences.append(pick(_ABOUT_QUOTE, 12))
    elif words:
        sentences.append(pick(_ABOUT_TOPIC, 12))
    else:
        sentences.append(pick(_NO_TOPIC, 12))
    sentences.append(pick(_DEVELOP, 20))
    if (h >> 28) % 2:
        sentences.append(_TURN[0] if turn == 1 else _TURN[1])
    if words and (h >> 32) % 3:
        sentences.append(pick(_QUESTIONS, 36))
    else:
        sentences.append(pick(_CLOSERS, 36))
    text = " ".join(s.format(**values) for s in sentences)
    return text[0].upper() + text[1:]
