import keras
import numpy as np
import pytest

from configs import default
from trainer.data import vocab
from trainer.model import layers as model_lib


@pytest.fixture
def config():
  return default.get_config().model


@pytest.fixture
def tokens():
  """A batch with different amounts of padding, from real problems."""
  texts = ["x=-12,y=34:y-x", "y=5,x=7:x*y", "x=-99,y=-99:y+x", "x=1,y=2:x+y"]
  ids = np.zeros((len(texts), 20), np.int32)
  for row, text in enumerate(texts):
    encoded = vocab.encode(text)
    ids[row, :len(encoded)] = encoded
  return ids


@pytest.fixture
def policy():
  yield keras.mixed_precision.set_global_policy
  keras.mixed_precision.set_global_policy("float32")


def embed_and_mask(model, tokens):
  mask = model.get_layer("masking").compute_mask(tokens)
  return model.get_layer("embed")(tokens, mask=mask), mask


def test_parameter_count_at_seed_dims(config):
  model = model_lib.build_model(config)
  assert model.count_params() == 49_145
  assert [w.shape for w in model.get_layer("reflect").weights] == [(15, 15)] * 3


def test_attention_on_masked_keys_is_zero(config, tokens):
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(config)
  embedded, mask = embed_and_mask(model, tokens)
  weights = np.asarray(
      model.get_layer("reflect").attention_weights(embedded, mask))
  key_is_pad = tokens == vocab.PAD_ID  # [batch, key]
  masked = np.broadcast_to(key_is_pad[:, None, :], weights.shape)
  assert masked.any() and (~masked).any()
  assert np.abs(weights[masked]).max() == 0.0
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)


def test_masked_embeddings_do_not_change_unmasked_outputs(config, tokens):
  keras.utils.set_random_seed(1)
  model = model_lib.build_model(config)
  reflect = model.get_layer("reflect")
  embedded, mask = embed_and_mask(model, tokens)
  noise = np.random.default_rng(0).normal(0, 10, embedded.shape)
  pad = (tokens == vocab.PAD_ID)[:, :, None]
  changed = np.where(pad, noise, np.asarray(embedded)).astype(np.float32)
  clean = np.asarray(reflect(embedded, mask=mask))
  dirty = np.asarray(reflect(changed, mask=mask))
  np.testing.assert_allclose(np.where(pad, 0, dirty), np.where(pad, 0, clean),
                             rtol=1e-6, atol=1e-7)
  assert (dirty[np.broadcast_to(pad, dirty.shape)] == 0).all()
  # The whole model: whatever the padding token's embedding row holds, the
  # logits stay the same.
  before = np.asarray(model(tokens))
  table = model.get_layer("embed").embeddings
  pad_row_changed = np.asarray(table).copy()
  pad_row_changed[vocab.PAD_ID] = 1e3
  table.assign(pad_row_changed)
  np.testing.assert_array_equal(np.asarray(model(tokens)), before)


@pytest.mark.parametrize("name, dtype", [("mixed_float16", "float16"),
                                         ("mixed_bfloat16", "bfloat16")])
def test_masked_logit_is_safe_in_half_precision(config, tokens, policy, name,
                                                dtype):
  policy(name)
  keras.utils.set_random_seed(2)
  model = model_lib.build_model(config)
  reflect = model.get_layer("reflect")
  assert reflect.compute_dtype == dtype
  embedded, mask = embed_and_mask(model, tokens)
  # Large activations too, and a row whose keys are all masked.
  mask = np.asarray(mask).copy()
  mask[0] = False
  weights = np.asarray(reflect.attention_weights(embedded * 30.0, mask),
                       np.float32)
  assert np.isfinite(weights).all()
  assert np.abs(weights[1:][~np.broadcast_to(mask[1:, None, :],
                                             weights[1:].shape)]).max() == 0
  np.testing.assert_allclose(weights[0], 1 / 20, rtol=1e-2)  # uniform
  logits = np.asarray(model(tokens), np.float32)
  assert logits.dtype == np.float32 and np.isfinite(logits).all()
  assert np.isfinite(np.float32(model_lib.masked_logit(dtype)))


def test_seed_constant_would_not_be_finite_in_float16():
  # Why the masked logit is not the seed's -1e9.
  with np.errstate(over="ignore"):
    assert not np.isfinite(np.float16(-1e9))
  assert np.isfinite(np.float16(model_lib.masked_logit("float16")))


def test_saved_model_reloads_with_its_layers(config, tokens, tmp_path):
  keras.utils.set_random_seed(3)
  model = model_lib.build_model(config)
  path = str(tmp_path / "model.keras")
  model.save(path)
  reloaded = keras.models.load_model(path)
  assert [type(l).__name__ for l in reloaded.layers] == [
      type(l).__name__ for l in model.layers]
  np.testing.assert_allclose(np.asarray(reloaded(tokens)),
                             np.asarray(model(tokens)), rtol=1e-6)
  embed = reloaded.get_layer("embed")
  assert (embed.vocab_size, embed.hidden_size) == (20, 15)


def test_layer_configs_round_trip():
  for layer in (model_lib.Masking(pad_id=0, name="m"),
                model_lib.Embed(20, 15, name="e"), model_lib.Reflect(name="r")):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


GROWN = {
    "heads": {"num_heads": 3},
    "layers": {"num_layers": 2},
    "blocks": {"num_layers": 2, "ffn_size": 32},
    "positions": {"position_embeddings": True},
    "dropout": {"ffn_size": 32, "dropout": 0.2},
    "all": {"num_heads": 5, "num_layers": 3, "ffn_size": 24,
            "position_embeddings": True, "dropout": 0.1},
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("options", GROWN.values(), ids=GROWN.keys())
def test_grown_models_ignore_padding(config, tokens, policy, options, dtype):
  """Whatever the padding token's embedding (and, with positions, the
  position vectors where the padding is), the logits stay the same."""
  policy("float32" if dtype == "float32" else "mixed_bfloat16")
  for key, value in options.items():
    config[key] = value
  keras.utils.set_random_seed(4)
  model = model_lib.build_model(config)
  before = np.asarray(model(tokens, training=False), np.float32)
  assert np.isfinite(before).all()
  table = model.get_layer("embed").embeddings
  changed = np.asarray(table).copy()
  changed[vocab.PAD_ID] = 1e3
  table.assign(changed)
  if options.get("position_embeddings"):
    positions = model.get_layer("positions").positions
    moved = np.asarray(positions).copy()
    moved[-3:] = 1e3  # the last 3 positions are padding in every row
    assert (tokens[:, -3:] == vocab.PAD_ID).all()
    positions.assign(moved)
  after = np.asarray(model(tokens, training=False), np.float32)
  np.testing.assert_array_equal(after, before)


def test_grown_models_train_with_dropout_only_in_training(config, tokens):
  for key, value in GROWN["all"].items():
    config[key] = value
  keras.utils.set_random_seed(5)
  model = model_lib.build_model(config)
  inference = [np.asarray(model(tokens, training=False)) for _ in range(2)]
  np.testing.assert_array_equal(inference[0], inference[1])
  training = [np.asarray(model(tokens, training=True)) for _ in range(2)]
  assert not np.array_equal(training[0], training[1])
  assert [l.name for l in model.layers if l.name.startswith("block")] == [
      "block_0", "block_1", "block_2"]
  heads = model.get_layer("block_0").attention
  embedded = np.random.default_rng(0).normal(size=(4, 20, 15)).astype(
      np.float32)
  weights = np.asarray(heads.attention_weights(embedded, tokens != 0))
  assert weights.shape == (4, 5, 20, 20)
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-5)


def test_one_head_one_layer_is_the_seed_model(config):
  for key, value in {"num_heads": 1, "num_layers": 1, "ffn_size": 0,
                     "position_embeddings": False, "dropout": 0.0}.items():
    config[key] = value
  model = model_lib.build_model(config)
  assert model.count_params() == 49_145
  assert [l.name for l in model.layers] == [
      "tokens", "masking", "embed", "reflect", "flatten", "dense", "logits"]


def test_grown_layer_configs_round_trip():
  for layer in (model_lib.Reflect(num_heads=3, keep_mask=True, name="r"),
                model_lib.PositionEmbed(name="p"),
                model_lib.Block(3, 24, 0.1, keep_mask=False, name="b")):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_scaled_config_validates_and_builds():
  from configs import scaled  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  config = scaled.get_config()
  plan.resolve(config, num_replicas=1)
  model = model_lib.build_model(config.model)
  assert model.count_params() == 73_508  # configs/scaled.py says so
  assert [l.name for l in model.layers if l.name.startswith("block")] == [
      "block_0", "block_1"]
  assert model.get_layer("positions") is not None


def test_fast_config_validates_builds_and_evaluates_from_step_8000():
  from configs import fast  # pylint: disable=g-import-not-at-top
  from configs import scaled  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import schedule  # pylint: disable=g-import-not-at-top
  config = fast.get_config()
  run_plan = plan.resolve(config, num_replicas=1)
  assert run_plan.target == plan.Target("accuracy", 0.99)
  model = model_lib.build_model(config.model)
  # scaled's model with one block of its two: the same sizes otherwise.
  assert [l.name for l in model.layers if l.name.startswith("block")] == [
      "block"]  # one block: no index
  scaled_model = model_lib.build_model(scaled.get_config().model)
  block = scaled_model.get_layer("block_1").count_params()
  assert model.count_params() == scaled_model.count_params() - block
  # Its evaluations: every 500 steps from 8,000, and the final one.
  table = schedule.Schedule.of(run_plan)
  step, evaluations = 0, []
  while step < table.num_steps:
    step = table.next_boundary(step)
    if schedule.Action.EVALUATE in table.due(step):
      evaluations.append(step)
  assert evaluations == list(range(8_000, config.train.num_steps + 1, 500))
