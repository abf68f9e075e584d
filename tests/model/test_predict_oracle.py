"""trainer.predict's answers against oracles of their own, in this process:
the arithmetic of each expression (evaluated here in Python) for problems a
model was trained until it answers them all, and the Keras model's argmax on
token ids encoded here from the vocabulary table. (tests/model/test_predict.py
runs the command against the SavedModel's own answers.)"""

import keras
import numpy as np
import pytest

from configs import smoke
from trainer import predict
from trainer.model import export
from trainer.model import layers as model_lib

# The vocabulary, id = position (DESIGN.md; trainer/data/vocab.py), written
# out here so that the encoding below is not the product's.
TABLE = " :|xy=,+-*0123456789"
LEN = 20
# Eight problems whose answers start with 5 different tokens (1 0 - 9 4).
TRAINED = ["x=3,y=4:x*y", "y=-12,x=5:x-y", "x=0,y=0:x+y", "y=99,x=-99:y*x",
           "x=-98,y=-97:x-y", "x=7,y=2:x+y", "y=8,x=6:y*x", "x=5,y=40:x-y"]
UNSEEN = ["x=1,y=1:x+y", "y=-3,x=8:x*y", "x=60,y=-6:y-x", "y=2,x=2:y*x",
          "x=-50,y=49:x+y", "x=9,y=9:x-y"]


def first_token_of_the_answer(expression):
  """'x=3,y=4:x*y' -> '1' (of 12), computed in Python."""
  definitions, operation = expression.split(":")
  values = {name: int(value) for name, value in
            (d.split("=") for d in definitions.split(","))}
  return str(eval(operation, {}, values))[0]  # pylint: disable=eval-used


def encode(expressions):
  return np.array([[TABLE.index(c) for c in e] + [0] * (LEN - len(e))
                   for e in expressions], np.int32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(Keras model, export directory): the smoke model trained on TRAINED
  alone until it answers each (60 steps of the 8, a few seconds)."""
  keras.utils.set_random_seed(0)
  config = smoke.get_config()
  model = model_lib.build_model(config.model)
  x = encode(TRAINED)
  y = np.array([TABLE.index(first_token_of_the_answer(e)) for e in TRAINED],
               np.int32)
  model.compile(optimizer=keras.optimizers.Adam(3e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True), jit_compile=False)
  model.fit(np.tile(x, (60, 1)), np.tile(y, 60), batch_size=8, epochs=1,
            verbose=0, shuffle=False)
  assert model(x).numpy().argmax(-1).tolist() == y.tolist(), (
      "the fixture's model did not learn its 8 problems")
  directory = tmp_path_factory.mktemp("oracle") / "export"
  export.export_saved_model(model, str(directory), LEN)
  return model, str(directory)


def test_answers_are_the_arithmetic_of_each_expression(exported):
  _, directory = exported
  answers = predict.Predictor(directory).predict(TRAINED)
  expected = [first_token_of_the_answer(e) for e in TRAINED]
  assert len(set(expected)) == 5
  assert [token for token, _ in answers] == expected
  assert all(0 < p <= 1 for _, p in answers)


def test_answers_are_the_models_argmax_on_hand_encoded_ids(exported):
  model, directory = exported
  problems = UNSEEN + TRAINED
  probabilities = keras.ops.softmax(model(encode(problems))).numpy()
  expected = [(TABLE[row.argmax()], float(row.max())) for row in
              probabilities]
  assert len({token for token, _ in expected[:len(UNSEEN)]}) > 1
  answers = predict.Predictor(directory).predict(problems)
  assert [token for token, _ in answers] == [t for t, _ in expected]
  for (_, found), (_, wanted) in zip(answers, expected):
    assert found == pytest.approx(wanted, rel=1e-4)
