"""The 20-token vocabulary of the arithmetic task (id = position in VOCAB).

' ' (id 0) is padding and ':' (id 1) separates the definitions from the
operation. Encoding works on str and returns a list of ids; every id fits in
one byte, so a whole problem also encodes to `bytes` with `encode_bytes`.
"""

from __future__ import annotations

from typing import Iterable

VOCAB: tuple[str, ...] = (
    " ", ":", "|", "x", "y", "=", ",", "+", "-", "*",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
)
VOCAB_SIZE = len(VOCAB)
TOKEN_IDS: dict[str, int] = {token: i for i, token in enumerate(VOCAB)}
PAD_ID = TOKEN_IDS[" "]
SEP_ID = TOKEN_IDS[":"]

_UNKNOWN = 0xFF
# Translation tables between ASCII bytes and one-byte ids; bytes outside the
# vocabulary map to _UNKNOWN.
_TO_IDS = bytes(TOKEN_IDS.get(chr(b), _UNKNOWN) for b in range(256))
_FROM_IDS = bytes.maketrans(bytes(range(VOCAB_SIZE)),
                            "".join(VOCAB).encode("ascii"))


class VocabError(ValueError):
  """A character or id outside the vocabulary."""


def _check_text(text: str) -> None:
  for position, char in enumerate(text):
    if char not in TOKEN_IDS:
      raise VocabError(
          f"unknown character {char!r} at position {position} of {text!r}: "
          f"the vocabulary is {''.join(VOCAB)!r}")


def encode(text: str) -> list[int]:
  """Returns the token ids of `text`.

  Raises:
    VocabError: naming the first character outside the vocabulary and its
      position.
  """
  return list(encode_bytes(text))


def encode_bytes(text: str) -> bytes:
  """Like `encode`, but returns the ids as bytes (one byte per token)."""
  try:
    ids = text.encode("ascii").translate(_TO_IDS)
  except UnicodeEncodeError:
    ids = bytes((_UNKNOWN,))
  if _UNKNOWN in ids:
    _check_text(text)
  return ids


def decode(ids: Iterable[int], strip_padding: bool = True) -> str:
  """Returns the text of token ids; trailing padding is dropped by default.

  Raises:
    VocabError: naming the first id outside [0, VOCAB_SIZE) and its position.
  """
  ids = [int(i) for i in ids]
  for position, token_id in enumerate(ids):
    if not 0 <= token_id < VOCAB_SIZE:
      raise VocabError(
          f"token id {token_id} at position {position} is outside the "
          f"vocabulary [0, {VOCAB_SIZE})")
  text = bytes(ids).translate(_FROM_IDS).decode("ascii")
  return text.rstrip(VOCAB[PAD_ID]) if strip_padding else text
