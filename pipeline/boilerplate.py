"""Project Gutenberg's header and footer, removed from a stream of text pieces.

The header runs through the `*** START OF THE/THIS PROJECT GUTENBERG EBOOK … ***` line (or, in older
files, the `*END*THE SMALL PRINT!…` line); the footer starts at the `*** END OF … ***` line, or at an
`End of (the) Project Gutenberg…` line when one comes first. The header is looked for in the first
HEADER_SCAN characters and the footer in the last FOOTER_SCAN, so a file of any size streams through
with bounded memory, and a file without them (the book's *The Time Machine*) passes unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

MODES = ("auto", "gutenberg", "none")
HEADER_SCAN = 100_000  # characters; Gutenberg headers are 1–20 k
FOOTER_SCAN = 100_000  # characters; the licence footer is ~19 k
_LOOKAHEAD = 4_000     # more characters read past HEADER_SCAN, so a marker line there is seen whole

START = re.compile(r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b"
                   r"|\*END\*THE SMALL PRINT!)[^\n]*(?:\n|\Z)", re.IGNORECASE | re.MULTILINE)
END = re.compile(r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b"
                 r"|End of (?:the |this )?Project Gutenberg\b)", re.IGNORECASE | re.MULTILINE)


class BoilerplateError(Exception):
    """--strip-boilerplate gutenberg on a file without the markers; the caller adds the file name."""


def strip(pieces: Iterator[str], mode: str, facts: dict) -> Iterator[str]:
    """Yields the text of `pieces` without Gutenberg's header and footer (per `mode`); sets facts
    ["boilerplate"] ("gutenberg" or "none") and facts["stripped_chars"] once the stream is exhausted."""
    facts["boilerplate"], facts["stripped_chars"] = "none", 0
    if mode == "none":
        yield from pieces
        return
    buffer, header_done, found = "", False, set()
    for piece in pieces:
        buffer += piece
        if not header_done and len(buffer) >= HEADER_SCAN + _LOOKAHEAD:
            buffer, header_done = _cut_header(buffer, facts, found), True
        if header_done and len(buffer) > FOOTER_SCAN:
            yield buffer[:-FOOTER_SCAN]
            buffer = buffer[-FOOTER_SCAN:]
    if not header_done:
        buffer = _cut_header(buffer, facts, found)
    match = END.search(buffer)
    if match:
        facts["stripped_chars"] += len(buffer) - match.start()
        buffer = buffer[:match.start()]
        found.add("footer")
    if mode == "gutenberg" and found != {"header", "footer"}:
        missing = f"a '*** START OF' line in its first {HEADER_SCAN:,} characters" \
            if "header" not in found else f"a '*** END OF' line in its last {FOOTER_SCAN:,} characters"
        raise BoilerplateError(f"--strip-boilerplate gutenberg: no Project Gutenberg header/footer found ({missing} "
                               "is missing); use --strip-boilerplate auto to accept files without it")
    if found:
        facts["boilerplate"] = "gutenberg"
    if buffer:
        yield buffer


def _cut_header(buffer: str, facts: dict, found: set) -> str:
    match = START.search(buffer, 0, HEADER_SCAN + _LOOKAHEAD)
    if not match or match.start() >= HEADER_SCAN:
        return buffer
    found.add("header")
    facts["stripped_chars"] += match.end()
    return buffer[match.end():]
