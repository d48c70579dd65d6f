"""Packaging for the deep-RNN language-model pipeline.

Also the file Beam ships to remote workers (`--setup_file ./setup.py`): the
sdist it builds holds the three packages workers import.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")
            and not ln.startswith("pytest")]


setup(
    name="deep-rnn-pipeline",
    version="0.1.0",
    description="Beam → Keras deep RNN → KerasTuner → TF Serving pipeline for character language models",
    packages=find_packages(include=["pipeline", "pipeline.*", "trainer", "trainer.*", "serving", "serving.*"]),
    python_requires=">=3.11",
    install_requires=_requirements(),
)
