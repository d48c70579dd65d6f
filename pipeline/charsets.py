"""Which text encoding a corpus file is in: UTF-8 when its bytes are valid UTF-8, otherwise detected.

Detection is charset-normalizer's, with two rules on top that matter for books: several Western code
pages often decode English text equally well (the detector then ranks them arbitrarily), so among the
equally clean candidates the most widely used one wins (Windows-1252 before Latin-1); and a file that is
mostly valid UTF-8 with a few bad bytes is damaged or mixed, not in another encoding, so it is refused.
"""
from __future__ import annotations

import codecs
import re

SAMPLE_BYTES = 4 << 20        # the detector reads at most the first 4 MiB
CHAOS_TOLERANCE = 0.05        # candidates this close to the cleanest decode count as equally clean
PREFERRED = ("cp1252", "latin_1", "iso8859_15")  # the usual re-saves of English text, most common first
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


class EncodingError(Exception):
    """No encoding fits; the message says why (the caller adds the file name)."""


def codec_name(name: str) -> str:
    """Python's canonical name of a text encoding ('UTF8' → 'utf-8'); LookupError for an unknown one and for
    Python's codecs that are not text encodings (rot13, base64, zlib_codec: bytes to bytes or str to str)."""
    info = codecs.lookup(name)
    if not getattr(info, "_is_text_encoding", True):
        raise LookupError(f"{name} is not a text encoding")
    return info.name


def first_invalid_utf8(open_fn, path: str, read_bytes: int) -> int | None:
    """Byte offset of the first invalid UTF-8 sequence in the file (a sequence cut off at the end counts),
    or None when the whole file is valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open_fn(path) as f:
        while True:
            raw = f.read(read_bytes)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                return offset - pending + max(err.start, 0)
            if not raw:
                return None
            offset += len(raw)


def detect(sample: bytes, bad_offset: int) -> str:
    """The codec for bytes that are not valid UTF-8 (bad_offset: where UTF-8 first fails)."""
    if _UTF8_MULTIBYTE.search(sample):
        raise EncodingError(f"invalid UTF-8 near byte {bad_offset}, in a file that is otherwise UTF-8 (damaged, or "
                            "two encodings mixed); pass --decode-errors replace to keep it, or --encoding CODEC")
    import charset_normalizer

    matches = list(charset_normalizer.from_bytes(sample))
    readable = [m for m in matches if m.coherence > 0]  # text in a language the detector recognises
    if not readable:
        raise EncodingError(f"invalid UTF-8 near byte {bad_offset}, and no other encoding gives readable text "
                            "(binary data?); pass --encoding CODEC to choose one")
    cleanest = min(m.chaos for m in readable)
    close = [m for m in readable if m.chaos <= cleanest + CHAOS_TOLERANCE]
    names = [codec_name(m.encoding) for m in close]
    best_text = str(close[0])
    for preferred in map(codec_name, PREFERRED):
        if preferred in names or _decodes_to(sample, preferred, best_text):
            return preferred
    return names[0]


def _decodes_to(sample: bytes, codec: str, text: str) -> bool:
    try:
        return sample.decode(codec) == text
    except UnicodeDecodeError:
        return False
