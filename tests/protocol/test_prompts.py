"""The prompt normal form and admission check that training captions and served prompts share."""

import subprocess
import sys

import pytest

from groupdiff.protocol.prompts import check_prompt, normalise_prompt


def test_the_prompt_module_imports_neither_torch_nor_numpy():
    script = "import sys, groupdiff.protocol.prompts; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("text, normal", [
    ("  a Dark\tCoat \n", "a Dark Coat"),  # strip, collapse, case kept (the tokenizer decides)
    ("caf\u0065\u0301 au lait", "caf\u00e9 au lait"),  # decomposed e + combining acute -> one code point (NFC)
    ("a\u00a0\u2003coat\r\nnow", "a coat now"),  # Unicode spaces and CRLF are whitespace too
    ("T-shirt", "T-shirt"),
])
def test_normalise_prompt(text, normal):
    assert normalise_prompt(text) == normal
    assert normalise_prompt(normal) == normal  # idempotent


def test_check_prompt_returns_the_normal_form_and_counts_it():
    assert check_prompt(" a  coat\n", max_chars=6) == "a coat"  # 6 characters once normalised
    assert check_prompt("e\u0301" * 3, max_chars=3) == "\u00e9" * 3  # code points after NFC


@pytest.mark.parametrize("text, message", [
    ("", "empty"), (" \t\n ", "empty"),
    ("a coat that is far too long", "27 characters long; at most 10"),
    ("a\x00coat", "U+0000 at position 1"), ("\x1b[31mred", "U+001B at position 0"),
    ("coat\x7f", "U+007F"), ("coat\x85", "U+0085"), ("coat\x1f", "U+001F"),
    ("coat\ud800", "U+D800"),  # a lone surrogate cannot be encoded as UTF-8
    (b"coat", "must be a string"), (None, "must be a string"),
])
def test_check_prompt_refuses_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match="prompt") as refused:
        check_prompt(text, max_chars=10)
    assert message in str(refused.value)
