"""Default config: the seed blog's model dimensions, sized for a CPU.

  python -m trainer.task --config=configs/default.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 20  # tokens in trainer/vocab.py (fixed)
  config.model.hidden_size = 15  # embedding and attention width
  config.model.dense_size = 150  # units of the hidden Dense layer
  config.model.len_max_input = 20  # padded length of defs + ':' + op

  return config
