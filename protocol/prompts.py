"""Text prompts as the stack sees them: one normal form and one admission check, written once.

Training caches the text embedding of every caption and serving encodes the prompt of every request; if the
two spelled the same prompt differently (a decomposed "é", a double space, a trailing newline), the served
model would see embeddings it was never trained on. Both therefore pass text through `normalise_prompt`.
It does not lower-case: whether case matters is the tokenizer's decision, not the wire's.

Standard library only, so the SDK can check a prompt before it sends one.
"""

from __future__ import annotations

import unicodedata

# Whitespace controls are folded into single spaces by `normalise_prompt`; every other control character
# (NUL, ESC, the information separators U+001C..U+001F, NEL, DEL, ...) is refused by `check_prompt`.
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")


def normalise_prompt(text: str) -> str:
    """Unicode NFC, no leading or trailing whitespace, every internal run of whitespace one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def check_prompt(text: str, max_chars: int) -> str:
    """The normalised prompt, or ValueError with a message fit for a client (HTTP 400/422 body).

    Refused: a non-string, a control character other than whitespace (they are invisible in logs and
    can steer terminals), a lone surrogate (not encodable as UTF-8), a prompt that is empty after
    normalisation, and one longer than ``max_chars`` characters (code points, counted after normalisation).
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _WHITESPACE_CONTROLS) or category == "Cs":
            raise ValueError(f"prompt contains control character U+{ord(char):04X} at position {position}")
    prompt = normalise_prompt(text)
    if not prompt:
        raise ValueError("prompt is empty (or only whitespace)")
    if len(prompt) > max_chars:
        raise ValueError(f"prompt is {len(prompt)} characters long; at most {max_chars} are allowed")
    return prompt
