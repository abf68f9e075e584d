"""The data set: its record format, the arithmetic problems, generation,
manifests, the input pipeline and record checks.

problems, vocab and manifest import no TensorFlow (the generator's spawned
workers and `python -m trainer.data` load them; tests/data checks it).
"""
