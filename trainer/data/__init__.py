"""The data set: its record format, the arithmetic problems, generation,
manifests, the input pipeline and record checks.

schema (the record format: features, splits, shard names, the serializer,
the record check) is the one owner of what a record and a split are.
schema, problems, vocab and manifest import no TensorFlow (the generator's
shard workers and `python -m trainer.data` load them; tests/data checks
it).
"""
