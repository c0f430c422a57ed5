"""Suite files and dataset cards read as their writers mean them.

PyYAML implements YAML 1.1, where a float needs a dot: ``learning_rate: 1e-3`` is read as the string
"1e-3" and the suite is refused as "not a number". YAML 1.2 (and JSON, and every other reader a user
knows) makes it a number; so does zoo, by adding YAML 1.2's float pattern to PyYAML's safe loader.
"""
from __future__ import annotations

import re

import yaml


class SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats (``1e-3``, ``5E4``) besides YAML 1.1's."""


SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(text: str):
    """``text`` (a suite file, a dataset card, a ``--set`` value) as Python values, YAML 1.2's floats included."""
    return yaml.load(text, Loader=SuiteLoader)  # noqa: S506 (a SafeLoader)
