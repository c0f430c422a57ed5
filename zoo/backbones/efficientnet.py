"""EfficientNet B0-B3 and EfficientNetV2-B0 (keras.applications; preprocessing inside the model)."""
from functools import partial

from zoo.backbones.spec import register_keras_application

# Keras's EfficientNet (V1) adds a Rescaling by 1/sqrt(stddev) after its Normalization layer
# only when built with weights="imagenet" (tensorflow/tensorflow#49930). zoo builds with
# random weights and loads the file itself, so it folds that factor into the Normalization
# variance instead: sqrt(variance * stddev) == stddev * sqrt(stddev) when variance == stddev**2.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def fold_imagenet_rescaling(model):
    """Make a V1 EfficientNet loaded from a file compute what Keras's imagenet build computes."""
    import numpy as np

    normalization = next(layer for layer in model.layers if layer.__class__.__name__ == "Normalization")
    variance = np.asarray(normalization.adapt_variance)
    normalization.adapt_variance.assign(variance * np.asarray(IMAGENET_STDDEV_RGB, dtype=variance.dtype))
    normalization.finalize_state()  # recomputes the broadcast variance used in call()


STRIDES = {2: "block2a_expand_activation", 4: "block3a_expand_activation",
           8: "block4a_expand_activation", 16: "block6a_expand_activation", 32: "top_activation"}
efficientnet = partial(register_keras_application, family="efficientnet", preprocessing="model",
                       base_url="https://storage.googleapis.com/keras-applications/",
                       strides=STRIDES, paper="arXiv:1905.11946", after_imagenet_load=fold_imagenet_rescaling)

efficientnet("efficientnet_b0", "EfficientNetB0", default_size=224,
             no_top=("efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
             top=("efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac"))
efficientnet("efficientnet_b1", "EfficientNetB1", default_size=240,
             no_top=("efficientnetb1_notop.h5", "74c4e6b3e1f6a1eea24c589628592432"),
             top=("efficientnetb1.h5", "1d254153d4ab51201f1646940f018540"))
efficientnet("efficientnet_b2", "EfficientNetB2", default_size=260,
             no_top=("efficientnetb2_notop.h5", "111f8e2ac8aa800a7a99e3239f7bfb39"),
             top=("efficientnetb2.h5", "b15cce36ff4dcbd00b6dd88e7857a6ad"))
efficientnet("efficientnet_b3", "EfficientNetB3", default_size=300,
             no_top=("efficientnetb3_notop.h5", "af6d107764bb5b1abb91932881670226"),
             top=("efficientnetb3.h5", "ffd1fdc53d0ce67064dc6a9c7960ede0"))

register_keras_application(
    "efficientnet_v2_b0", "EfficientNetV2B0", family="efficientnet_v2", preprocessing="model",
    base_url="https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/",
    no_top=("efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff"),
    top=("efficientnetv2-b0.h5", "21ecbf6da12460d5c40bb2f29ceb2188"), paper="arXiv:2104.00298",
    strides={2: "block1a_project_activation", 4: "block2b_add", 8: "block4a_expand_activation",
             16: "block6a_expand_activation", 32: "top_activation"})
