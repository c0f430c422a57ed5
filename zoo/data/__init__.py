"""Datasets: cards, sources, split carving, the decoded-once image cache and the input pipeline."""
from zoo.data.cards import DATASETS
from zoo.data.sources import SOURCES, DatasetInfo, Source, open_source, resolve_dataset_config
from zoo.data import tracks  # noqa: F401,E402  (registers the track sources)

__all__ = ["DATASETS", "SOURCES", "DatasetInfo", "Source", "open_source", "resolve_dataset_config"]
