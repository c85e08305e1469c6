"""Build script. Metadata lives in pyproject.toml; this file is where compiled
extensions (the Cython backend) are declared."""
from setuptools import setup

setup()
