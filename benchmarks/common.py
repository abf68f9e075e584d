"""What the benchmarks share: the checkout on sys.path, the pairing of sides
and the ratio report.

Every script imports it first (`import common`; a script's own directory is
on sys.path when it runs as `python benchmarks/X.py`), before anything of
the package: it puts this checkout first on sys.path, so a script measures
the code beside it, not whichever copy the virtualenv has installed (an
editable install may point elsewhere). Some scripts use tests/helpers (the
GCS emulator, the soak's workers, the eval line's parser): install the
`test` extra.

Ratios are taken within pairs: on a shared 2-core machine the speed drifts
by +-40% over minutes, too much for ratios of separate runs. `alternate`
runs the sides of a pair back to back, swapping their order every other
pair so neither always runs first; `ratio` reports the median of the pairs'
ratios and their range, in one wording for every script.
"""

import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
  sys.path.insert(0, ROOT)


def alternate(sides, repeats):
  """Yields (repeat, sides) `repeats` times: `sides` in the given order on
  even repeats (0, 2, ...) and reversed on odd ones (A, B, B, A, A, B, ...),
  so that a pair's order does not favour one side."""
  sides = list(sides)
  for repeat in range(repeats):
    yield repeat, (sides if repeat % 2 == 0 else sides[::-1])


def spread(values, noun="pairs", form="{:.2f}"):
  """"median of N pairs; min A, max B" of `values` (their median is printed
  before it by the caller)."""
  return (f"median of {len(values)} {noun}; min {form.format(min(values))}, "
          f"max {form.format(max(values))}")


def ratio(ratios, noun="pairs"):
  """"1.02x (median of 5 pairs; min 0.98, max 1.10)": the report of a
  ratio taken within each pair."""
  return f"{statistics.median(ratios):.2f}x ({spread(ratios, noun)})"
