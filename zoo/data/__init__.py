"""Datasets: cards, sources, split carving and the tf.data input pipeline."""
from zoo.data.cards import DATASETS
from zoo.data.sources import SOURCES, DatasetInfo, Source, open_source, resolve_dataset_config

__all__ = ["DATASETS", "SOURCES", "DatasetInfo", "Source", "open_source", "resolve_dataset_config"]
