"""The smoke subset for the oldest TensorFlow and Keras the package declares.

.ci/run installs the package a second time, in .venv-floor with the floor
pairing: tensorflow-cpu pinned to the lower bound of setup.py's `cpu` extra
and keras to the lower bound of its install_requires, and runs these tests
there:

  pytest -m floor tests/test_floor.py

(the file named: collecting the whole tree would import TensorFlow in
pytest's own processes too, ~10 s more).

The real entry points, as a user runs them: the smoke config trains on the
default strategy and on `mirrored` over 2 logical CPU devices, exports, and
`python -m trainer.predict` answers from each export. The main suite does
not run them (pytest.ini deselects the `floor` marker: the newest
TensorFlow's runs of the same commands are in tests/test_task.py,
tests/model/test_predict.py, tests/launch/ and
tests/training/test_equivalence.py): `pytest -m floor` runs them in any
virtualenv.
"""

import json
import math
import re

import pytest

from tests.helpers import SMOKE

pytestmark = pytest.mark.floor

# Problems of the smoke data (|x|, |y| < 100), one per operation.
PROBLEMS = ["x=3,y=4:x*y", "y=-12,x=5:x-y", "x=-98,y=97:y+x"]
# A progress line of the training loop:
# "train: ... 10/40 steps, ..., loss 2.9484, ...".
PROGRESS = re.compile(r"^train: .* (?P<step>\d+)/(?P<total>\d+) steps, "
                      r".*, loss (?P<loss>[^,]+),", re.MULTILINE)
ANSWER = re.compile(r"^(?P<problem>\S+) -> (?P<token>\S|' ') "
                    r"\(p=(?P<p>\d\.\d\d)\)$")


@pytest.mark.parametrize("strategy, flags, replicas", [
    pytest.param("_DefaultDistributionStrategy", ["--strategy=default"], 1,
                 id="default"),
    pytest.param("MirroredStrategy",
                 ["--strategy=mirrored", "--num_cpu_devices=2"], 2,
                 id="mirrored")])
def test_smoke_run_trains_exports_and_predicts(run, smoke_data, tmp_path,
                                               strategy, flags, replicas):
  model_dir = tmp_path / "run"
  result = run("trainer.task", f"--config={SMOKE}", f"--data_dir={smoke_data}",
               f"--model_dir={model_dir}", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"strategy: {strategy} with {replicas} replica(s)" in result.stderr
  # The loss fell: the first host loop's mean against the last one's.
  progress = [(int(m["step"]), int(m["total"]), float(m["loss"]))
              for m in PROGRESS.finditer(result.stderr)]
  assert len(progress) >= 2, result.stderr[-3000:]
  (first_step, total, first_loss), (last_step, _, last_loss) = (
      progress[0], progress[-1])
  assert first_step < last_step == total == 40, progress
  assert math.isfinite(last_loss) and last_loss < 0.9 * first_loss, progress
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 40 and metrics["num_replicas"] == replicas
  assert math.isfinite(metrics["eval"]["loss"]), metrics["eval"]
  assert metrics["eval"]["examples"] == 4 * 16  # eval_steps batches
  assert (model_dir / "export" / "saved_model.pb").is_file()
  assert list((model_dir / "checkpoints").glob("*.index")), "no checkpoint"
  # The export answers through the predict command, one line per problem.
  answered = run("trainer.predict", f"--model_dir={model_dir}", *PROBLEMS)
  assert answered.returncode == 0, answered.stderr[-3000:]
  lines = answered.stdout.splitlines()
  assert [ANSWER.match(l)["problem"] if ANSWER.match(l) else l
          for l in lines] == PROBLEMS, answered.stdout
  for line in lines:
    assert 0 < float(ANSWER.match(line)["p"]) <= 1, line
