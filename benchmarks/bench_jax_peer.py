"""Prints the trainer's CPU per example against a plain JAX + optax step.

  python benchmarks/bench_jax_peer.py [--repeats=5] [--loops=5]
  python benchmarks/bench_jax_peer.py --sides trainer \
      'trainer XLA_FLAGS=--xla_cpu_use_thunk_runtime=false' [--no-jax]

Optional: runs only where `jax` and `optax` are installed (they are not
dependencies of the package); without them it says so in one line and exits
with status 2.

jax: the seed model at the default config's dims (trainer/model/layers.py:
Masking, Embed, one-head Reflect, Dense(relu), Dense(logits); the same
masking rule), sparse cross-entropy over the batch, Adam (Keras's epsilon)
with the trainer's schedule (linear warm-up, cosine decay to
min_learning_rate_ratio x the peak), written as a flax user writes it: one
`jax.jit` step per batch, its state donated, on batches already in memory as
device arrays.

trainer: `trainer.training.train.Trainer.train_loop` fed the same in-memory
batches, repeated (bench_steady_state.py's side "M": its functions), in host
loops of the default config's steps_per_loop (steps_per_call steps per XLA
call).

Each side runs in its own process (JAX and TensorFlow each start thread
pools sized to the machine; in one process they would share the cores), so
each side's CPU time is its own process's. A side is a kind (`trainer` or
`jax`) followed by optional environment variables (KEY=VALUE, set before its
process starts: XLA_FLAGS, TF_ENABLE_ONEDNN_OPTS, ...) and, for the trainer,
config overrides (`train.steps_per_call=20`): comparing variants of the
trainer is the same command with more sides. Every measurement runs
`--loops` host loops after one warm-up loop, the sides in the order of
`common.alternate`; the ratios (the first side / each other, and each side's
CPU per example / the jax side's) are taken within each round. Figures:
examples/s and CPU microseconds per example (the side's process, all its
threads), median with min/max.
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common  # first: the checkout on sys.path

# The batches both kinds train on, written by the first trainer process.
_BATCHES = "batches.npz"


def make_config(batch_size, overrides=()):
  """The default config at `batch_size` with the bench's small data set and
  `overrides` ("train.steps_per_call=20") applied."""
  import bench_steady_state  # pylint: disable=g-import-not-at-top
  config = bench_steady_state.make_config(batch_size)
  for override in overrides:
    path, _, value = override.partition("=")
    *sections, field = path.split(".")
    section = config
    for name in sections:
      section = section[name]
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:  # a bare string: bfloat16
      parsed = value
    section[field] = type(section[field])(parsed)
  return config


def trainer_measure(config, data_dir, num_batches):
  """The trainer on in-memory batches (bench_steady_state's side M):
  returns its measuring function. Writes the batches to data_dir for the
  jax side."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import bench_steady_state  # pylint: disable=g-import-not-at-top
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure(config)  # as trainer/task.py, before the first op
  files = feeds.list_data_files(plan.resolve(config, data_dir=data_dir))
  path = os.path.join(data_dir, _BATCHES)
  if not os.path.exists(path):
    xs, ys = bench_steady_state.in_memory_batches(config, files, num_batches)
    np.savez(path + ".tmp.npz", x=xs.numpy(), y=ys.numpy())
    os.replace(path + ".tmp.npz", path)
  return bench_steady_state.in_memory_trainer_side(config, files, num_batches,
                                                   "default")


def jax_measure(config, data_dir):
  """A plain JAX + optax jit step of the seed model on in-memory batches;
  returns a measuring function as loop_measure's: (seconds, CPU seconds) of
  `loops` host loops of steps_per_loop steps, after one warm-up loop."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  # pylint: enable=g-import-not-at-top
  model, train = config.model, config.train
  batches = np.load(os.path.join(data_dir, _BATCHES))
  xs = [jnp.asarray(x) for x in batches["x"]]  # [batch, len] int32 each
  ys = [jnp.asarray(y) for y in batches["y"]]  # [batch] int32 each
  glorot = jax.nn.initializers.glorot_uniform()
  keys = jax.random.split(jax.random.PRNGKey(config.seed), 6)
  hidden, length = model.hidden_size, model.len_max_input
  params = {
      "embeddings": glorot(keys[0], (model.vocab_size, hidden)),
      "query": glorot(keys[1], (hidden, hidden)),
      "key": glorot(keys[2], (hidden, hidden)),
      "value": glorot(keys[3], (hidden, hidden)),
      "dense_kernel": glorot(keys[4], (length * hidden, model.dense_size)),
      "dense_bias": jnp.zeros(model.dense_size),
      "logits_kernel": glorot(keys[5], (model.dense_size, model.vocab_size)),
      "logits_bias": jnp.zeros(model.vocab_size)}

  def logits_of(params, x):
    mask = (x != 0).astype(jnp.float32)  # [batch, len]
    embedded = params["embeddings"][x] * mask[:, :, None]  # [b, len, hidden]
    q = embedded @ params["query"]
    k = embedded @ params["key"]
    v = embedded @ params["value"]
    scores = jnp.einsum("bsi,bzi->bsz", q, k) / jnp.sqrt(float(hidden))
    scores = jnp.where(mask[:, None, :] > 0, scores, -0.5 * 3.4e38)
    attended = jnp.einsum("bsz,bzi->bsi", jax.nn.softmax(scores), v)
    attended = attended * mask[:, :, None]
    h = jax.nn.relu(attended.reshape(x.shape[0], -1) @ params["dense_kernel"]
                    + params["dense_bias"])
    return h @ params["logits_kernel"] + params["logits_bias"]

  def loss_of(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_of(params, x), y).mean()

  schedule = optax.warmup_cosine_decay_schedule(
      0.0, train.learning_rate, train.warmup_steps, train.num_steps,
      end_value=train.learning_rate * train.min_learning_rate_ratio)
  optimizer = optax.adam(schedule, eps=1e-7)  # Keras's epsilon
  state = {"params": params, "opt": optimizer.init(params)}

  def step(state, x, y):
    loss, grads = jax.value_and_grad(loss_of)(state["params"], x, y)
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates),
            "opt": opt}, loss

  step = jax.jit(step, donate_argnums=0)  # the state updated in place
  position = [0]

  def host_loop():
    nonlocal state
    loss = None
    for _ in range(train.steps_per_loop):
      i = position[0] % len(xs)
      position[0] += 1
      state, loss = step(state, xs[i], ys[i])
    return float(loss)

  def measure(loops):
    host_loop()  # warm-up loop (and the first call's compilation)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(loops):
      host_loop()
    return time.perf_counter() - start, time.process_time() - cpu

  return measure


def serve(args):
  """A side's process: builds its measuring function, says "ready", then
  answers each line "N" on stdin with "seconds cpu_seconds" of N loops."""
  kind, *overrides = args.serve
  config = make_config(args.batch_size, overrides)
  measure = (jax_measure(config, args.data_dir) if kind == "jax" else
             trainer_measure(config, args.data_dir, args.memory_batches))
  print("ready", flush=True)
  for line in sys.stdin:
    seconds, cpu = measure(int(line))
    print(f"{seconds} {cpu}", flush=True)
  # At once: TensorFlow's and JAX's teardown took minutes on a busy machine.
  os._exit(0)  # pylint: disable=protected-access


class Side:
  """One side's process (this script with --serve), spoken to over pipes."""

  def __init__(self, spec, args):
    self.name = spec
    kind, *rest = spec.split()
    if kind not in ("jax", "trainer"):
      raise SystemExit(f"error: side {spec!r}: the kind is jax or trainer")
    env = dict(os.environ)
    overrides = []
    for item in rest:
      key, _, value = item.partition("=")
      if key.isupper():
        env[key] = value
      else:
        overrides.append(item)
    self.process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", kind,
         *overrides, f"--data_dir={args.data_dir}",
         f"--batch_size={args.batch_size}",
         f"--memory_batches={args.memory_batches}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    self.steps_per_loop = make_config(args.batch_size,
                                      overrides).train.steps_per_loop

  def wait_ready(self):
    for line in self.process.stdout:
      if line.strip() == "ready":
        return
    raise SystemExit(f"error: side {self.name!r} ended before it was ready "
                     f"(status {self.process.wait()})")

  def measure(self, loops):
    self.process.stdin.write(f"{loops}\n")
    self.process.stdin.flush()
    seconds, cpu = map(float, self.process.stdout.readline().split())
    return seconds, cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sides", nargs="+", default=["trainer", "jax"],
                      help="'KIND [ENV=VALUE ...] [section.field=value ...]'"
                      "; the first is the reference of the ratios")
  parser.add_argument("--jax", action=argparse.BooleanOptionalAction,
                      default=True, help="add the jax side if --sides lacks "
                      "it (CPU per example / jax's)")
  parser.add_argument("--repeats", type=int, default=5, help="rounds")
  parser.add_argument("--loops", type=int, default=5,
                      help="timed host loops per measurement")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--memory_batches", type=int, default=64,
                      help="distinct in-memory batches, repeated")
  parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.serve:
    return serve(args)
  sides = list(args.sides)
  if args.jax and not any(s.split()[0] == "jax" for s in sides):
    sides.append("jax")
  if any(s.split()[0] == "jax" for s in sides) and not all(
      importlib.util.find_spec(name) for name in ("jax", "optax")):
    print("bench_jax_peer: needs jax and optax (pip install jax optax); "
          "not installed here", file=sys.stderr)
    return 2
  from trainer.data import generate  # pylint: disable=g-import-not-at-top
  args.data_dir = tempfile.mkdtemp(prefix="bench_jax_peer_")
  running = []
  try:
    config = make_config(args.batch_size)
    generate.ensure_dataset(args.data_dir, config.data, config.seed)
    # The trainer sides first: the first one writes the batches jax reads.
    order = sorted(sides, key=lambda s: s.split()[0] != "trainer")
    for spec in order:
      running.append(Side(spec, args))
      if spec == order[0]:
        running[-1].wait_ready()
    for side in running[1:]:
      side.wait_ready()
    by_name = {side.name: side for side in running}
    rates = {name: [] for name in sides}
    cpu_us = {name: [] for name in sides}
    over_first = {name: [] for name in sides[1:]}
    jax_name = next((s for s in sides if s.split()[0] == "jax"), None)
    over_jax = ({name: [] for name in sides if name != jax_name}
                if jax_name else {})
    for i, order in common.alternate(sides, args.repeats):
      for name in order:
        side = by_name[name]
        examples = args.loops * side.steps_per_loop * args.batch_size
        seconds, cpu = side.measure(args.loops)
        rates[name].append(examples / seconds)
        cpu_us[name].append(cpu / examples * 1e6)
      for name in over_first:
        over_first[name].append(cpu_us[name][-1] / cpu_us[sides[0]][-1])
      if jax_name:
        for name in over_jax:
          over_jax[name].append(cpu_us[name][-1] / cpu_us[jax_name][-1])
      print(f"round {i + 1}/{args.repeats}: " + "; ".join(
          f"{name}: {rates[name][-1]:,.0f} examples/s, "
          f"{cpu_us[name][-1]:.2f} us CPU/example" for name in sides),
            flush=True)
    print(f"batch {args.batch_size}, {args.loops} host loops a measurement, "
          f"seed dims; CPU: each side's own process, all its threads")
    for name in sides:
      print(f"{name}: {statistics.median(rates[name]):,.0f} examples/s "
            f"({common.spread(rates[name], 'rounds', '{:,.0f}')}); "
            f"{statistics.median(cpu_us[name]):.2f} us CPU/example "
            f"({common.spread(cpu_us[name], 'rounds')})")
    for name, ratios in over_first.items():
      print(f"CPU/example, {name} / {sides[0]}: {common.ratio(ratios, 'rounds')}")
    for name, ratios in over_jax.items():
      print(f"CPU/example, {name} / jax: {common.ratio(ratios, 'rounds')}"
            f"; goal <= 1.00x")
  finally:
    for side in running:  # all told first, then waited for
      side.process.stdin.close()
    for side in running:
      side.process.wait()
    shutil.rmtree(args.data_dir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
