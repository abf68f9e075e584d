import pytest

from trainer.data import vocab


def test_vocabulary_is_the_seed_one():
  assert vocab.VOCAB_SIZE == 20
  assert "".join(vocab.VOCAB) == " :|xy=,+-*0123456789"
  assert (vocab.PAD_ID, vocab.SEP_ID) == (0, 1)


def test_encode_decode_round_trip():
  text = "x=-12,y=34:y-x"
  ids = vocab.encode(text)
  assert ids == [3, 5, 8, 11, 12, 6, 4, 5, 13, 14, 1, 4, 8, 3]
  assert vocab.encode_bytes(text) == bytes(ids)
  assert vocab.decode(ids + [0, 0, 0]) == text
  assert vocab.decode(ids + [0], strip_padding=False) == text + " "


@pytest.mark.parametrize("text, char, position", [
    ("x=1a", "a", 3), ("x=\x05", "\x05", 2), ("é", "é", 0)])
def test_unknown_character_names_character_and_position(text, char, position):
  with pytest.raises(vocab.VocabError) as error:
    vocab.encode(text)
  assert repr(char) in str(error.value)
  assert f"position {position}" in str(error.value)


def test_decode_rejects_ids_outside_vocabulary():
  with pytest.raises(vocab.VocabError, match=r"token id 20 at position 1"):
    vocab.decode([3, 20])
