"""SavedModel export with two serving signatures.

  serving_default: int32 token ids [batch, len_max_input] -> logits,
                   probabilities [batch, vocab] and the predicted token id.
  predict_text:    problem strings [batch] such as "x=3,y=4:x*y" -> the same
                   plus the predicted first token of the result as a string.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from trainer.cloud import storage
from trainer.data import vocab


def encode_text(problems: tf.Tensor, len_max_input: int) -> tf.Tensor:
  """In-graph `vocab.encode` of a batch of strings, padded with 0.

  An unknown character or a problem longer than `len_max_input` fails with
  an InvalidArgumentError saying so.
  """
  codepoints = tf.strings.unicode_decode(problems, "UTF-8")  # [batch, (chars)]
  table = [-1] * 256
  for token_id, token in enumerate(vocab.VOCAB):
    table[ord(token)] = token_id
  flat = codepoints.flat_values
  in_range = (flat >= 0) & (flat < 256)
  ids = tf.where(in_range, tf.gather(tf.constant(table, tf.int32),
                                     tf.clip_by_value(flat, 0, 255)), -1)
  checks = [
      tf.debugging.Assert(
          tf.reduce_all(ids >= 0),
          ["a problem has a character outside the vocabulary "
           f"{''.join(vocab.VOCAB)!r}", problems], summarize=8),
      tf.debugging.Assert(
          tf.reduce_max(tf.concat([codepoints.row_lengths(), [0]], 0))
          <= len_max_input,
          [f"a problem is longer than len_max_input={len_max_input}",
           problems], summarize=8),
  ]
  with tf.control_dependencies(checks):
    tokens = codepoints.with_flat_values(ids)
    batch = tf.shape(problems, out_type=tf.int64)[0]
    return tokens.to_tensor(default_value=vocab.PAD_ID,
                            shape=tf.stack([batch, len_max_input]))


class _Exported(tf.Module):
  """Holds the model and its serving functions for tf.saved_model.save."""

  def __init__(self, model: keras.Model, len_max_input: int):
    super().__init__()
    self.model = model
    self.len_max_input = len_max_input
    self.serve_tokens = tf.function(
        self._serve_tokens,
        input_signature=[tf.TensorSpec([None, len_max_input], tf.int32,
                                       name="tokens")])
    self.serve_text = tf.function(
        self._serve_text,
        input_signature=[tf.TensorSpec([None], tf.string, name="problems")])

  def _serve_tokens(self, tokens):
    logits = tf.cast(self.model(tokens, training=False), tf.float32)
    return {"logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "token_id": tf.argmax(logits, axis=-1, output_type=tf.int32)}

  def _serve_text(self, problems):
    outputs = self._serve_tokens(encode_text(problems, self.len_max_input))
    outputs["token"] = tf.gather(tf.constant(vocab.VOCAB),
                                 outputs["token_id"])
    return outputs


def export_saved_model(model: keras.Model, export_dir: str,
                       len_max_input: int, replace_whole: bool = True) -> str:
  """Writes the SavedModel (local or gs://); returns `export_dir`.

  A local `export_dir` of its own (`replace_whole`) is written under a
  temporary name and renamed into place, so it is always one whole
  SavedModel; on gs:// (no directory rename) or in a directory shared with
  other files (Vertex AI's AIP_MODEL_DIR) it is written in place, and the
  run's metrics.json, written after it, is what says it is whole.
  """
  module = _Exported(model, len_max_input)
  swap = replace_whole and "://" not in export_dir
  if swap:  # a killed export's leftovers first
    for leftover in storage.glob(f"{storage.escape(export_dir)}.tmp-*"):
      shutil.rmtree(leftover, ignore_errors=True)
  target = storage.temp_name(export_dir) if swap else export_dir
  tf.saved_model.save(
      module, target,
      signatures={"serving_default": module.serve_tokens,
                  "predict_text": module.serve_text})
  if swap:
    old = None
    if os.path.exists(export_dir):
      old = storage.temp_name(export_dir)
      os.rename(export_dir, old)
    os.rename(target, export_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  return export_dir


def is_saved_model(export_dir: str) -> bool:
  """Whether `export_dir` holds a SavedModel (its graph and variables)."""
  return tf.io.gfile.exists(storage.join(export_dir, "saved_model.pb")) and (
      tf.io.gfile.exists(storage.join(export_dir, "variables",
                                      "variables.index")))
