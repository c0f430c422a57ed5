"""Dataset cards: one YAML file per dataset in the repository's ``datasets/`` folder.

A card is the single description of a dataset (task, classes, channels, splits, licence,
citation, reference results) and names its ``source`` kind, which says how to load it.
"""
from __future__ import annotations

import os
from pathlib import Path

from zoo.registry import Registry
from zoo.yamlfile import read_yaml

CARDS_DIR_ENV = "ZOO_DATASETS_DIR"
REQUIRED_CARD_KEYS = ("name", "task", "source", "description", "license", "citation")
TASKS = ("classification", "segmentation")


def cards_dir() -> Path:
    if os.environ.get(CARDS_DIR_ENV):
        return Path(os.environ[CARDS_DIR_ENV])
    return Path(__file__).resolve().parents[2] / "datasets"


def read_card(path: Path) -> dict:
    card = read_yaml(Path(path).read_text())
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"dataset card {path} lacks {', '.join(missing)}")
    if card["task"] not in TASKS:
        raise ValueError(f"dataset card {path}: task must be one of {TASKS}, got {card['task']!r}")
    return card


def load_cards() -> Registry:
    registry: Registry[dict] = Registry("dataset")
    folder = cards_dir()
    for path in sorted(folder.glob("*.yaml")):
        card = read_card(path)
        registry.register(card["name"], card)
    return registry


DATASETS = load_cards()


def cited_results(card: dict) -> list[dict]:
    """The published results a card cites (``reference_results``: source, model, metric, value, note), those
    with a metric and a value; shown beside zoo's own by the report, zoo serve and zoo data info."""
    return [row for row in card.get("reference_results") or []
            if isinstance(row, dict) and row.get("metric") and row.get("value") is not None]
