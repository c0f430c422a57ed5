"""Walking a Keras model's layers: what precise BatchNorm and the weights loader both need, kept below them."""


def walk_layers(layer):
    """``layer`` and every layer nested inside it, depth first."""
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from walk_layers(inner)
