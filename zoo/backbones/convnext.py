"""ConvNeXt (keras.applications; preprocessing inside the model; stem has stride 4)."""
from zoo.backbones.spec import register_keras_application

register_keras_application(
    "convnext_tiny", "ConvNeXtTiny", family="convnext", preprocessing="model",
    base_url="https://storage.googleapis.com/tensorflow/keras-applications/convnext/",
    no_top=("convnext_tiny_notop.h5", "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    top=("convnext_tiny.h5", "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff"),
    paper="arXiv:2201.03545", license="MIT (weights), Apache-2.0 (code)",
    strides={4: "convnext_tiny_stage_0_block_2_identity", 8: "convnext_tiny_stage_1_block_2_identity",
             16: "convnext_tiny_stage_2_block_8_identity", 32: "convnext_tiny_stage_3_block_2_identity"})
