"""The seed blog's program: its tf.data pipeline, its model and Keras `fit`.

  python benchmarks/seed_fit.py --data_dir=DIR [--num_shards=2] \
      [--batch_size=256] [--num_epochs=10] [--log_dir=DIR]
  python benchmarks/seed_fit.py --data_dir=DIR --generate --examples=51200

`benchmarks/bench_process.py` runs it as a subprocess against
`python -m trainer.task`. Written from "Unified Adaptable Masking That
Follows" (shared/seed/000_...txt) as faithfully as Keras 3 allows:

Identical to the seed: the files (`shard_0000.tfrecords`, ... of
`tf.train.Example` with int64-list features `defs`, `op`, `res`, read in
order); the pipeline (TFRecordDataset -> batch -> parse_example with
VarLenFeature -> cast to int32 -> ragged concat defs ':' op, pad to
len_max_input; y = res[:, :1]), with no shuffle, no prefetch and no
parallel map; the layers (Masking, Embed with embedding_lookup, Reflect with
the seed's einsums and its -1e9 mask added along the *query* axis), Reshape,
Dense(relu), Dense `dbd`: 49,145 parameters at the seed's dimensions (vocab
20, hidden 15, dense 150, len 20); Adam() with its default learning rate,
sparse cross-entropy from logits as loss and as metric; `fit` over
`num_epochs` epochs with the seed's TensorBoard callback
(`histogram_freq=1`); no XLA (`jit_compile=False`, what Keras picks on a CPU
anyway).

Not identical: Keras 3 instead of tf.keras 2 (`keras.ops.not_equal` in
`compute_mask`, which Keras 3 calls on symbolic tensors; `ensure_shape` on
the labels, whose rank Keras 3's loss must know; layer constructors call
`super().__init__`, which the blog's excerpt lost); batch 256 instead of
the blog's small batches; a fixed seed; the data problems come from this
package's generator (`trainer.problems`, same task and value range), written
with `tf.io.TFRecordWriter` by `--generate`. The seed evaluates nothing and
exports nothing (the trainer does both).
"""

import argparse
import datetime
import pathlib as pth

import common  # pylint: disable=unused-import  # the checkout on sys.path

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import keras as ks  # pylint: disable=g-import-not-at-top

kl = ks.layers

tokens = {c: i for i, c in enumerate(" :|xy=,+-*0123456789")}
SEP = tokens[":"]


class Params:

  def __init__(self, **kw):
    for k, v in kw.items():
      setattr(self, k, v)


def caster(d):
  return {k: tf.cast(v, tf.int32) for k, v in d.items()}


def adapter(d, len_max_input):
  ds = tf.RaggedTensor.from_sparse(d["defs"])
  ss = tf.fill([ds.nrows(), 1], SEP)
  os_ = tf.RaggedTensor.from_sparse(d["op"])
  x = tf.concat([ds, ss, os_], axis=1).to_tensor()
  x = tf.pad(x, [[0, 0], [0, len_max_input - tf.shape(x)[-1]]])
  y = tf.RaggedTensor.from_sparse(d["res"])[:, :1].to_tensor()
  y = tf.ensure_shape(y, [None, 1])  # Keras 3 needs the labels' rank
  return x, y


def files(ps):
  d = pth.Path(ps.data_dir)
  for i in range(ps.num_shards):
    i = "{:0>4d}".format(i)
    yield str(d / f"shard_{i}.tfrecords")


def dset_for(ps):
  ds = tf.data.TFRecordDataset(list(files(ps)))
  ds = ds.batch(ps.dim_batch)
  fs = {
      "defs": tf.io.VarLenFeature(tf.int64),
      "op": tf.io.VarLenFeature(tf.int64),
      "res": tf.io.VarLenFeature(tf.int64),
  }
  ds = ds.map(lambda x: tf.io.parse_example(x, fs)).map(caster)
  return ds.map(lambda d: adapter(d, tf.constant(ps.len_max_input)))


class Layer(kl.Layer):

  def __init__(self, **kw):
    super().__init__(**kw)
    self.supports_masking = True


class Masking(Layer):

  def compute_mask(self, x, mask=None):
    return ks.ops.not_equal(x, 0)  # Keras 3: tf.not_equal fails here

  def call(self, x):
    return x


class Embed(Layer):

  def __init__(self, ps):
    super().__init__()
    s = (ps.dim_vocab, ps.dim_hidden)
    self.emb = self.add_weight(name="emb", shape=s)

  def call(self, x, mask=None):
    y = tf.nn.embedding_lookup(self.emb, x)
    if mask is not None:
      y *= tf.cast(mask, tf.float32)[:, :, None]
    return y


class Reflect(Layer):

  def build(self, shape):
    s = shape[-1]
    self.scale = 1 / (s**0.5)
    self.q = self.add_weight(name="q", shape=(s, s))
    self.k = self.add_weight(name="k", shape=(s, s))
    self.v = self.add_weight(name="v", shape=(s, s))
    return super().build(shape)

  def call(self, x, mask=None):
    q = tf.einsum("bsi,ij->bsj", x, self.q)
    k = tf.einsum("bsi,ij->bsj", x, self.k)
    y = tf.einsum("bsi,bzi->bsz", q, k) * self.scale
    if mask is not None:
      m = tf.logical_not(mask)
      m = tf.cast(m, tf.float32)[:, :, None]
      y += m * -1e9
    v = tf.einsum("bsi,ij->bsj", x, self.v)
    y = tf.einsum("bsz,bzi->bsi", tf.nn.softmax(y), v)
    return y


def model_for(ps):
  x = ks.Input(shape=(ps.len_max_input,), dtype="int32")
  y = Masking()(x)
  y = Embed(ps)(y)
  y = Reflect()(y)
  y = kl.Reshape((ps.len_max_input * ps.dim_hidden,))(y)
  y = kl.Dense(ps.dim_dense, activation="relu")(y)
  y = kl.Dense(ps.dim_vocab, name="dbd", activation=None)(y)
  m = ks.Model(inputs=x, outputs=y)
  m.compile(optimizer=ps.optimizer, loss=ps.loss, metrics=[ps.metric],
            jit_compile=False)
  return m


def main_graph(ps, ds, m):
  ld = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  ld = f"{ps.log_dir}/{ld}"
  cs = [ks.callbacks.TensorBoard(log_dir=ld, histogram_freq=1)]
  m.fit(ds, callbacks=cs, epochs=ps.num_epochs)


def generate(ps, examples, seed):
  """Writes `examples` problems over ps.num_shards seed-format shards."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trainer.data import problems  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  pth.Path(ps.data_dir).mkdir(parents=True, exist_ok=True)
  per_shard = examples // ps.num_shards

  def feature(text):
    ids = [tokens[c] for c in text]
    return tf.train.Feature(int64_list=tf.train.Int64List(value=ids))

  for path in files(ps):
    with tf.io.TFRecordWriter(path) as writer:
      for defs, op, res in problems.generate_problems(rng, per_shard, 100):
        example = tf.train.Example(features=tf.train.Features(feature={
            "defs": feature(defs), "op": feature(op), "res": feature(res)}))
        writer.write(example.SerializeToString())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--num_shards", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_epochs", type=int, default=10)
  parser.add_argument("--log_dir", default="/tmp/q/logs")
  parser.add_argument("--generate", action="store_true",
                      help="write the shards instead of training")
  parser.add_argument("--examples", type=int, default=51_200,
                      help="with --generate: examples over all shards")
  args = parser.parse_args()
  ks.utils.set_random_seed(0)
  ps = Params(
      data_dir=args.data_dir,
      dim_batch=args.batch_size,
      dim_dense=150,
      dim_hidden=15,
      dim_vocab=len(tokens),
      len_max_input=20,
      log_dir=args.log_dir,
      loss=ks.losses.SparseCategoricalCrossentropy(from_logits=True),
      metric=ks.metrics.SparseCategoricalCrossentropy(from_logits=True),
      num_epochs=args.num_epochs,
      num_shards=args.num_shards,
      optimizer=ks.optimizers.Adam(),
  )
  if args.generate:
    generate(ps, args.examples, seed=0)
    return
  main_graph(ps, dset_for(ps), model_for(ps))


if __name__ == "__main__":
  main()
