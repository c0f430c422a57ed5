import pytest

from zoo.registry import Registry, UnknownNameError


@pytest.fixture
def registry():
    r = Registry("backbone")
    for name in ["resnet50", "resnet101", "mobilenet_v2", "vgg16"]:
        r.register(name, name.upper())
    return r


def test_get_and_glob_listing(registry):
    assert registry.get("vgg16") == "VGG16"
    assert registry.list("resnet*") == ["resnet50", "resnet101"]
    assert registry.list() == ["resnet50", "resnet101", "mobilenet_v2", "vgg16"]


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownNameError) as error:
        registry.get("resnet05")
    assert "resnet50" in str(error.value) and "zoo list backbones" in str(error.value)


def test_expand_keeps_order_without_repeats_and_rejects_empty_patterns(registry):
    assert registry.expand(["vgg16", "resnet*", "resnet50"]) == ["vgg16", "resnet50", "resnet101"]
    with pytest.raises(UnknownNameError):
        registry.expand(["efficientnet*"])


def test_registering_twice_is_an_error(registry):
    with pytest.raises(ValueError, match="already registered"):
        registry.register("vgg16", "again")
