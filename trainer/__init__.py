"""masked-attention-trainer: train the masked self-attention model under any
tf.distribute strategy (see README.md)."""

__version__ = "0.1.0"
