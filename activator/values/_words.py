"""Words: splitting and quoting of command lines and environment values, and the names of users,
groups and environment variables.

Rule 1: :func:`split_words` and :func:`quote_word` are inverses: ``split_words(quote_word(w))`` is
``[w]`` for every word without a NUL. Bytes that are not UTF-8 travel as surrogate escapes both
ways.

Rule 2: a word knows no ``%`` specifiers and no ``$`` variables; expanding them is the caller's
business.
"""

from __future__ import annotations

import re
from typing import Final

from ._common import _WS, _decimal, _encode

# --- Words and quoting --------------------------------------------------------------------------

# cunescape_one() in src/basic/escape.c.
_SIMPLE_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip
_ESCAPES_FOR: Final = {v: k for k, v in _SIMPLE_ESCAPES.items() if k not in "s'"}


def _valid_unichar(code: int) -> bool:
    # unichar_is_valid() in src/basic/utf8.c, which \U checks and \u does not.
    return (
        code < 0x110000
        and not 0xD800 <= code <= 0xDFFF
        and not 0xFDD0 <= code <= 0xFDEF
        and (code & 0xFFFE != 0xFFFE)
    )


def _cunescape(text: str, pos: int, out: bytearray) -> int:
    """Append the escape at ``text[pos]``, just after a backslash, to ``out``; return the end."""
    if pos == len(text):
        msg = "trailing backslash"
        raise ValueError(msg)
    char = text[pos]
    if char in _SIMPLE_ESCAPES:
        out += _SIMPLE_ESCAPES[char].encode()
        return pos + 1
    # \xNN and \NNN are bytes; \uNNNN and \UNNNNNNNN are code points, written as UTF-8. None may
    # be zero.
    for lead, digits, pattern, base in (
        ("x", 2, "[0-9a-fA-F]{2}", 16), ("u", 4, "[0-9a-fA-F]{4}", 16),
        ("U", 8, "[0-9a-fA-F]{8}", 16), ("", 3, "[0-3][0-7]{2}", 8),
    ):  # fmt: skip
        start = pos + len(lead)
        if char == lead or (not lead and char in "01234567"):
            code_text = text[start : start + digits]
            code = int(code_text, base) if re.fullmatch(pattern, code_text) else 0
            if not code or (lead == "U" and not _valid_unichar(code)):
                msg = f"invalid escape '\\{text[pos : start + digits]}'"
                raise ValueError(msg)
            out += (
                bytes([code]) if lead in ("x", "") else chr(code).encode("utf-8", "surrogatepass")
            )
            return start + digits
    msg = f"unknown escape '\\{char}' (write '\\\\' for a backslash)"
    raise ValueError(msg)


def split_words(text: str) -> list[str]:
    """Split a value into words as ``ExecStart=`` and ``Environment=`` do.

    This is extract_first_word() of src/basic/extract-word.c with EXTRACT_UNQUOTE and
    EXTRACT_CUNESCAPE: whitespace separates words; ``"..."`` and ``'...'`` group, and may open
    anywhere in a word (``--name="a b"`` is one word; systemd.syntax(7) documents a stricter rule
    than the code, and ``systemd-tmpfiles`` 252 confirms the code's); C escapes (``\\n``, ``\\s``,
    ``\\xNN``, ``\\NNN``, ``\\uNNNN``, ``\\UNNNNNNNN``...) work inside and outside quotes, and a
    backslash before any other character is an error.

    Raises:
        ValueError: an unknown or invalid escape, a trailing backslash, or an unterminated quote.
    """
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        if pos == len(text):
            return words
        out, quote = bytearray(), ""
        while pos < len(text) and (quote or text[pos] not in _WS):
            char = text[pos]
            if char == "\\":
                pos = _cunescape(text, pos + 1, out)
                continue
            if char == quote:
                quote = ""
            elif not quote and char in "'\"":
                quote = char
            else:
                out += _encode(char)
            pos += 1
        if quote:
            msg = f"unterminated {quote} quote"
            raise ValueError(msg)
        words.append(out.decode("utf-8", "surrogateescape"))


def _quote_char(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES_FOR:
        return "\\" + _ESCAPES_FOR[char]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if char.isprintable() or (code > 0xFFFF and not _valid_unichar(code)):
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def quote_word(word: str) -> str:
    """Return a token that :func:`split_words` reads back as exactly ``[word]``.

    The word is left bare when it can be, else double-quoted with C escapes; ``""`` is the empty
    word. ``%`` specifiers and ``$`` variables are the caller's business.

    Raises:
        ValueError: the word holds a NUL, which no escape can express, or surrogates that are not
            the escapes of non-UTF-8 bytes as :func:`split_words` produces them.
    """
    if "\0" in word or _encode(word).decode("utf-8", "surrogateescape") != word:
        msg = "must be text without NUL that came from bytes (surrogateescape)"
        raise ValueError(msg)
    if word and all(c == _quote_char(c) and c not in "'\" " for c in word):
        return word
    return '"' + "".join(_quote_char(c) for c in word) + '"'


# --- Names --------------------------------------------------------------------------------------


def parse_user_name(text: str, *, allow_numeric: bool) -> str:
    """Parse a user or group name as the strict valid_user_group_name() of src/basic/user-util.c.

    ``[A-Za-z_][A-Za-z0-9_-]*``, at most 31 characters (utmp's limit). With ``allow_numeric``, a
    decimal ID 0..4294967294 but 65535 is accepted too and returned in canonical form.
    """
    if allow_numeric and re.fullmatch(r"[0-9]+", text):
        uid = _decimal(text, 0, 2**32 - 2, "numeric ID")
        if uid == 65535:  # uid_is_valid(): (uint16_t) -1 is refused, as the 32-bit (uid_t) -1
            msg = "numeric ID must not be 65535"
            raise ValueError(msg)
        return str(uid)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,30}", text) is None:
        msg = f"must be 1..31 of [A-Za-z0-9_-], not starting with a digit or '-' (got {text!r})"
        raise ValueError(msg)
    return text


def parse_env_name(word: str) -> str:
    """Parse an environment variable name, ``[A-Za-z_][A-Za-z0-9_]*`` (env_name_is_valid())."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word) is None:
        msg = f"variable name must be [A-Za-z_][A-Za-z0-9_]* (got {word!r})"
        raise ValueError(msg)
    return word


def parse_env_assignment(word: str) -> tuple[str, str]:
    """Parse ``NAME=value`` (env_assignment_is_valid()); the value may be empty.

    As env_value_is_valid(), the value must be UTF-8 without control characters but tab and newline.
    """
    name, equals, value = word.partition("=")
    if not equals:
        msg = "must be NAME=VALUE (missing '=')"
        raise ValueError(msg)
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", value):
        msg = f"value of {name} must be UTF-8 without control characters but tab and newline"
        raise ValueError(msg)
    return parse_env_name(name), value


# --- EnvironmentFile= ---------------------------------------------------------------------------

# Characters a backslash escapes inside double quotes (systemd's SHELL_NEED_ESCAPE).
_ENV_FILE_ESCAPES: Final = '"\\`$'


def parse_environment_file(text: str) -> list[tuple[str, str]]:
    """Read an ``EnvironmentFile=`` as systemd's ``load_env_file()`` does.

    Lines are ``KEY=VALUE``; blank lines and lines starting with ``#`` or ``;`` are comments;
    whitespace around the key and before the value is dropped, and after an unquoted value;
    ``'...'`` quotes literally, ``"..."`` honours backslash before ``" \\ ` $`` and before a
    newline; a backslash outside quotes escapes the next character, and before a newline
    continues the line.

    Raises:
        ValueError: ``line N: ...`` for a line without ``=``, an invalid variable name or an
            unterminated quote.
    """
    out: list[tuple[str, str]] = []
    pos, line, size = 0, 1, len(text)
    while pos < size:
        start_line = line
        char = text[pos]
        if char in " \t\r":
            pos += 1
            continue
        if char == "\n":
            pos, line = pos + 1, line + 1
            continue
        if char in "#;":
            end = text.find("\n", pos)
            pos = size if end < 0 else end
            continue
        end = text.find("=", pos)
        newline = text.find("\n", pos)
        if end < 0 or (0 <= newline < end):
            msg = f"line {start_line}: expected KEY=VALUE"
            raise ValueError(msg)
        key = text[pos:end].strip(" \t\r")
        try:
            parse_env_name(key)
        except ValueError as error:
            msg = f"line {start_line}: {error}"
            raise ValueError(msg) from error
        pos = end + 1
        while pos < size and text[pos] in " \t\r":
            pos += 1
        value: list[str] = []
        trailing = 0  # unquoted whitespace at the end of value, dropped at the line's end
        while pos < size and text[pos] != "\n":
            char = text[pos]
            if char == "\\":
                if pos + 1 < size and text[pos + 1] == "\n":
                    pos, line = pos + 2, line + 1
                    continue
                if pos + 1 < size:
                    value.append(text[pos + 1])
                trailing = 0
                pos += 2
            elif char in "'\"":
                close = pos + 1
                while close < size and text[close] != char:
                    if char == '"' and text[close] == "\\" and close + 1 < size:
                        following = text[close + 1]
                        if following == "\n":
                            line += 1
                        elif following in _ENV_FILE_ESCAPES:
                            value.append(following)
                        else:
                            value.append("\\" + following)
                        close += 2
                        continue
                    if text[close] == "\n":
                        line += 1
                    value.append(text[close])
                    close += 1
                if close >= size:
                    msg = f"line {start_line}: unterminated {char} quote"
                    raise ValueError(msg)
                trailing = 0
                pos = close + 1
            else:
                value.append(char)
                trailing = trailing + 1 if char in " \t\r" else 0
                pos += 1
        text_value = "".join(value)
        out.append((key, text_value[: len(text_value) - trailing] if trailing else text_value))
    return out
