"""Packaging for the deep-RNN language-model pipeline.

Also the file Beam ships to remote workers (`--setup_file ./setup.py`): the sdist it builds holds the packages
workers import. Package data: the native kernels' C++ source (built on first use) and the measured forms table
that `--backend-form auto` reads.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
PACKAGES = ("common", "pipeline", "trainer", "serving", "deep_rnn")


def _requirements(name: str = "requirements.txt"):
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="deep-rnn-pipeline",
    version="0.2.0",
    description="Beam → Keras deep RNN → KerasTuner → TF Serving pipeline for character language models",
    packages=find_packages(include=[*PACKAGES, *(f"{p}.*" for p in PACKAGES)]),
    package_data={"trainer": ["kernels/*.cc", "forms_table.json"]},
    python_requires=">=3.11",
    install_requires=_requirements(),
    extras_require={"dask": _requirements("requirements-dask.txt")},
    entry_points={"console_scripts": ["deep-rnn = deep_rnn.cli:main"]},
)
