"""The masked self-attention model (Keras 3).

Masking (mask = token != 0) -> Embed (lookup; masked positions zeroed) ->
Reflect (single-head self-attention; masked keys get a large negative logit,
masked queries give zeros) -> Reshape -> Dense(relu) -> Dense(vocab logits).

The model knows no flags and no files: `build_model` takes the `model`
section of a config.
"""

from __future__ import annotations

import keras
from keras import ops

# The logit of a masked key is half the dtype's largest finite value: finite
# in float16 (-32752) and bfloat16, exp() of it underflows to exactly 0, and
# subtracting the row maximum inside softmax cannot overflow, so even a row
# whose keys are all masked is uniform rather than NaN.
_LARGEST_FINITE = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


def masked_logit(dtype: str) -> float:
  """The logit given to masked keys when computing in `dtype`."""
  return -0.5 * _LARGEST_FINITE[keras.backend.standardize_dtype(dtype)]


@keras.saving.register_keras_serializable(package="trainer")
class Masking(keras.layers.Layer):
  """Passes token ids through and computes the mask `ids != pad`."""

  def __init__(self, pad_id: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.pad_id = pad_id
    self.supports_masking = True

  def compute_mask(self, inputs, mask=None):
    # keras.ops, not tf.*: this also runs on KerasTensors at model build.
    return ops.not_equal(inputs, self.pad_id)

  def call(self, inputs):
    return inputs

  def get_config(self):
    return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="trainer")
class Embed(keras.layers.Layer):
  """Embedding table lookup; positions under the mask become zero vectors."""

  def __init__(self, vocab_size: int, hidden_size: int, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.supports_masking = True

  def build(self, input_shape):
    self.embeddings = self.add_weight(
        name="embeddings", shape=(self.vocab_size, self.hidden_size),
        initializer="glorot_uniform")

  def call(self, inputs, mask=None):
    embedded = ops.take(ops.cast(self.embeddings, self.compute_dtype),
                        inputs, axis=0)  # [batch, length, hidden]
    if mask is not None:
      embedded = embedded * ops.cast(mask, self.compute_dtype)[:, :, None]
    return embedded

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="trainer")
class Reflect(keras.layers.Layer):
  """Self-attention (the seed blog calls it Reflect): one head, q, k, v
  matrices, scores scaled by 1/sqrt(d).

  Keys under the mask get a large negative logit, so no position attends to
  padding; outputs at masked query positions are zero. The mask is consumed
  here (`compute_mask` returns None).
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.supports_masking = True

  def build(self, input_shape):
    hidden_size = input_shape[-1]
    self.scale = 1.0 / float(hidden_size) ** 0.5
    for name in ("query", "key", "value"):
      setattr(self, name, self.add_weight(
          name=name, shape=(hidden_size, hidden_size),
          initializer="glorot_uniform"))

  def attention_weights(self, inputs, mask=None):
    """Softmax weights [batch, query, key] over the unmasked keys."""
    dtype = self.compute_dtype
    q = ops.einsum("bsi,ij->bsj", inputs, ops.cast(self.query, dtype))
    k = ops.einsum("bsi,ij->bsj", inputs, ops.cast(self.key, dtype))
    logits = ops.einsum("bsi,bzi->bsz", q, k) * ops.cast(self.scale, dtype)
    if mask is not None:
      # Mask the key axis (z): where, not an added constant, so nothing
      # overflows in float16.
      key_mask = ops.expand_dims(mask, axis=1)  # [batch, 1, key]
      logits = ops.where(key_mask, logits,
                         ops.cast(masked_logit(dtype), dtype))
    return ops.softmax(logits, axis=-1)

  def call(self, inputs, mask=None):
    weights = self.attention_weights(inputs, mask)  # [batch, query, key]
    v = ops.einsum("bsi,ij->bsj", inputs,
                   ops.cast(self.value, self.compute_dtype))
    outputs = ops.einsum("bsz,bzi->bsi", weights, v)  # [batch, length, hidden]
    if mask is not None:
      outputs = outputs * ops.cast(mask, outputs.dtype)[:, :, None]
    return outputs

  def compute_mask(self, inputs, mask=None):
    return None


def build_model(model_config) -> keras.Model:
  """Builds the functional model from a config's `model` section.

  Args:
    model_config: has `vocab_size`, `hidden_size`, `dense_size` and
      `len_max_input`.

  Returns:
    An uncompiled keras.Model from int32 [batch, len_max_input] token ids to
    float32 [batch, vocab_size] logits of the result's first token.
  """
  inputs = keras.Input(shape=(model_config.len_max_input,), dtype="int32",
                       name="tokens")
  x = Masking(name="masking")(inputs)
  x = Embed(model_config.vocab_size, model_config.hidden_size,
            name="embed")(x)
  x = Reflect(name="reflect")(x)
  x = keras.layers.Reshape(
      (model_config.len_max_input * model_config.hidden_size,),
      name="flatten")(x)
  x = keras.layers.Dense(model_config.dense_size, activation="relu",
                         name="dense")(x)
  # float32 logits under any mixed-precision policy: the loss stays stable.
  logits = keras.layers.Dense(model_config.vocab_size, name="logits",
                              dtype="float32")(x)
  return keras.Model(inputs=inputs, outputs=logits, name="masked_attention")
