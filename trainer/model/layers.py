"""The masked self-attention model (Keras 3).

The seed's model (the defaults):
Masking (mask = token != 0) -> Embed (lookup; masked positions zeroed) ->
Reflect (single-head self-attention; masked keys get a large negative logit,
masked queries give zeros) -> Reshape -> Dense(relu) -> Dense(vocab logits).

Grown by the config's model fields: `num_heads` (Reflect splits q, k and v
into heads, same weights), `position_embeddings` (a learned vector per
position, added after Embed), `num_layers` attention layers, and with
`ffn_size` > 0 each becomes a block (pre-norm residual attention, then a
pre-norm residual feed-forward of that width, masked positions kept zero),
`dropout` after attention, feed-forward and the hidden Dense. Every option
keeps the masking rule: padding never changes the logits.

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
  """Self-attention (the seed blog calls it Reflect): q, k, v matrices of
  [hidden, hidden], split into `num_heads` heads of hidden / num_heads
  (one head: the seed's), scores scaled by 1/sqrt(head size), the heads'
  outputs concatenated.

  Keys under the mask get a large negative logit, so no position attends to
  padding; outputs at masked query positions are zero. The mask is consumed
  here (`compute_mask` returns None) unless `keep_mask` (stacked layers).
  """

  def __init__(self, num_heads: int = 1, keep_mask: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.keep_mask = keep_mask
    self.supports_masking = True

  def build(self, input_shape):
    hidden_size = input_shape[-1]
    if hidden_size % self.num_heads:
      raise ValueError(f"hidden size {hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}")
    self.head_size = hidden_size // self.num_heads
    self.scale = 1.0 / float(self.head_size) ** 0.5
    for name in ("query", "key", "value"):
      setattr(self, name, self.add_weight(
          name=name, shape=(hidden_size, hidden_size),
          initializer="glorot_uniform"))

  def _heads(self, inputs, weight):
    """inputs [batch, length, hidden] @ weight, as [batch, length, heads,
    head_size]."""
    projected = ops.einsum("bsi,ij->bsj", inputs,
                           ops.cast(weight, self.compute_dtype))
    return ops.reshape(projected, (-1, projected.shape[1], self.num_heads,
                                   self.head_size))

  def _weights(self, inputs, mask):
    """Softmax weights [batch, heads, query, key] over the unmasked keys."""
    dtype = self.compute_dtype
    q, k = self._heads(inputs, self.query), self._heads(inputs, self.key)
    logits = ops.einsum("bshd,bzhd->bhsz", q, k) * ops.cast(self.scale, dtype)
    if mask is not None:
      # Mask the key axis (z): where, not an added constant, so nothing
      # overflows in float16.
      key_mask = mask[:, None, None, :]  # [batch, 1, 1, key]
      logits = ops.where(key_mask, logits,
                         ops.cast(masked_logit(dtype), dtype))
    return ops.softmax(logits, axis=-1)

  def attention_weights(self, inputs, mask=None):
    """Softmax weights over the unmasked keys: [batch, query, key] for one
    head, [batch, heads, query, key] for several."""
    weights = self._weights(inputs, mask)
    return weights[:, 0] if self.num_heads == 1 else weights

  def call(self, inputs, mask=None):
    weights = self._weights(inputs, mask)  # [batch, heads, query, key]
    v = self._heads(inputs, self.value)  # [batch, key, heads, head_size]
    outputs = ops.einsum("bhsz,bzhd->bshd", weights, v)
    outputs = ops.reshape(outputs, (-1, outputs.shape[1],
                                    self.num_heads * self.head_size))
    if mask is not None:
      outputs = outputs * ops.cast(mask, outputs.dtype)[:, :, None]
    return outputs

  def compute_mask(self, inputs, mask=None):
    return mask if self.keep_mask else None

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads,
            "keep_mask": self.keep_mask}


@keras.saving.register_keras_serializable(package="trainer")
class PositionEmbed(keras.layers.Layer):
  """Adds a learned vector per position; masked positions stay zero."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.supports_masking = True

  def build(self, input_shape):
    self.positions = self.add_weight(
        name="positions", shape=(input_shape[1], input_shape[2]),
        initializer=keras.initializers.RandomNormal(stddev=0.02))

  def call(self, inputs, mask=None):
    outputs = inputs + ops.cast(self.positions, self.compute_dtype)[None]
    if mask is not None:
      outputs = outputs * ops.cast(mask, self.compute_dtype)[:, :, None]
    return outputs


@keras.saving.register_keras_serializable(package="trainer")
class Block(keras.layers.Layer):
  """x + Reflect(LayerNorm(x)), then x + FeedForward(LayerNorm(x)), with
  dropout on both branches; masked positions are zeroed after each
  residual, so padding reaches nothing (LayerNorm and the biases would
  make it non-zero). Passes the mask on."""

  def __init__(self, num_heads: int, ffn_size: int, dropout: float = 0.0,
               keep_mask: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.ffn_size = ffn_size
    self.dropout = dropout
    self.keep_mask = keep_mask
    self.supports_masking = True

  def build(self, input_shape):
    hidden_size = input_shape[-1]
    self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
    self.attention = Reflect(self.num_heads, name="reflect")
    self.ffn_norm = keras.layers.LayerNormalization(name="ffn_norm")
    self.ffn_in = keras.layers.Dense(self.ffn_size, activation="relu",
                                     name="ffn_in")
    self.ffn_out = keras.layers.Dense(hidden_size, name="ffn_out")
    self.drop = keras.layers.Dropout(self.dropout)
    for layer in (self.attention_norm, self.attention, self.ffn_norm):
      layer.build(input_shape)
    self.ffn_in.build(input_shape)
    self.ffn_out.build((*input_shape[:-1], self.ffn_size))

  def call(self, inputs, mask=None, training=None):
    keep = 1.0 if mask is None else ops.cast(mask, self.compute_dtype)[
        :, :, None]
    x = inputs
    attended = self.attention(self.attention_norm(x), mask=mask)
    x = (x + self.drop(attended, training=training)) * keep
    fed = self.ffn_out(self.ffn_in(self.ffn_norm(x)))
    return (x + self.drop(fed, training=training)) * keep

  def compute_mask(self, inputs, mask=None):
    return mask if self.keep_mask else None

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads,
            "ffn_size": self.ffn_size, "dropout": self.dropout,
            "keep_mask": self.keep_mask}


def build_model(model_config) -> keras.Model:
  """Builds the functional model from a config's `model` section.

  Args:
    model_config: has `vocab_size`, `hidden_size`, `dense_size` and
      `len_max_input`; optionally `num_heads`, `num_layers`, `ffn_size`,
      `position_embeddings` and `dropout` (absent: the seed's model).

  Returns:
    An uncompiled keras.Model from int32 [batch, len_max_input] token ids to
    float32 [batch, vocab_size] logits of the result's first token.
  """
  inputs = keras.Input(shape=(model_config.len_max_input,), dtype="int32",
                       name="tokens")
  x = Masking(name="masking")(inputs)
  x = Embed(model_config.vocab_size, model_config.hidden_size,
            name="embed")(x)
  num_heads = model_config.get("num_heads", 1)
  num_layers = model_config.get("num_layers", 1)
  ffn_size = model_config.get("ffn_size", 0)
  dropout = model_config.get("dropout", 0.0)
  if model_config.get("position_embeddings", False):
    x = PositionEmbed(name="positions")(x)
  for index in range(num_layers):
    # Layer names of the seed's model kept for one layer (checkpoints).
    suffix = "" if num_layers == 1 else f"_{index}"
    if ffn_size:
      x = Block(num_heads, ffn_size, dropout,
                keep_mask=index < num_layers - 1, name=f"block{suffix}")(x)
    else:  # the seed's bare attention
      x = Reflect(num_heads, keep_mask=index < num_layers - 1,
                  name=f"reflect{suffix}")(x)
  x = keras.layers.Reshape(
      (model_config.len_max_input * model_config.hidden_size,),
      name="flatten")(x)
  x = keras.layers.Dense(model_config.dense_size, activation="relu",
                         name="dense")(x)
  if dropout:
    x = keras.layers.Dropout(dropout, name="dropout")(x)
  # float32 logits under any mixed-precision policy: the loss stays stable.
  logits = keras.layers.Dense(model_config.vocab_size, name="logits",
                              dtype="float32")(x)
  return keras.Model(inputs=inputs, outputs=logits, name="masked_attention")
