"""The eval metrics of a Vertex AI hyperparameter tuning trial, reported the
way Vertex AI reads them (the `cloudml-hypertune` convention).

A trial is a custom job that Vertex AI starts with the study's parameters as
flags (`--config.train.learning_rate=0.004`, see launch/vertex_ai.sh tune)
and with CLOUD_ML_TRIAL_ID set; Vertex AI reads the trial's measurements
from the file CLOUD_ML_HP_METRIC_FILE names (default
/tmp/hypertune/output.metrics): one JSON object a line, e.g.

  {"accuracy": "0.8125", "global_step": "40", "timestamp": 1765000000.1, "trial": "3"}

the metric's tag (the study's metricId) with its value as a string, the step
as a string, the time, the trial id. The file holds the last 100 entries and
is rewritten whole at each report. This is the format cloudml-hypertune's
HyperTune.report_hyperparameter_tuning_metric writes; it is written here
rather than through that package because the package is about twenty lines
(one small file) and would be a dependency of every install for a feature
only Vertex AI trials use. Unlike the package, the
file is replaced atomically (written beside it, then renamed), so a reader
never sees half a line.

Each evaluation reports both `accuracy` and `loss` (one entry each, as two
calls of the package would), so a study may maximize the one or minimize
the other. Only the chief reports (the eval metrics are all-reduced: every
worker has the same), and only in a trial: without CLOUD_ML_TRIAL_ID
nothing is written.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Mapping

TRIAL_ENV = "CLOUD_ML_TRIAL_ID"
FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
DEFAULT_FILE = "/tmp/hypertune/output.metrics"
# The eval metrics a study can name (metricId): launch/vertex_ai.sh tune
# accepts these alone.
METRICS = ("accuracy", "loss")
# Entries the file keeps, as cloudml-hypertune keeps them.
MAX_ENTRIES = 100


class Reporter:
  """Writes a trial's measurements to its metric file."""

  def __init__(self, trial: str, path: str):
    self.trial = trial
    self.path = path
    self.entries: collections.deque[dict[str, Any]] = collections.deque(
        maxlen=MAX_ENTRIES)

  @classmethod
  def from_env(cls, environ: Mapping[str, str] = os.environ
               ) -> Reporter | None:
    """The reporter of this trial, None outside a tuning trial."""
    trial = environ.get(TRIAL_ENV, "")
    if not trial:
      return None
    return cls(trial, environ.get(FILE_ENV) or DEFAULT_FILE)

  def report(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Adds an entry per metric of METRICS in `metrics` (an evaluation at
    `step`) and rewrites the file."""
    now = time.time()
    for tag in METRICS:
      self.entries.append({tag: str(float(metrics[tag])),
                           "global_step": str(int(step)),
                           "timestamp": now, "trial": self.trial})
    directory = os.path.dirname(self.path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    partial = f"{self.path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as f:
      for entry in self.entries:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    os.replace(partial, self.path)
