"""MobileNet V1, V2 and V3 (keras.applications)."""
from functools import partial

from zoo.backbones.spec import register_keras_application

URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
mobilenet = partial(register_keras_application, family="mobilenet")

# Keras publishes no hash for the V1 and V2 files; they are used unchecked, as Keras does.
mobilenet("mobilenet", "MobileNet", base_url=URL + "mobilenet/",
          no_top=("mobilenet_1_0_224_tf_no_top.h5", None), top=("mobilenet_1_0_224_tf.h5", None),
          preprocessing="tf", paper="arXiv:1704.04861",
          strides={2: "conv_pw_1_relu", 4: "conv_pw_3_relu", 8: "conv_pw_5_relu",
                   16: "conv_pw_11_relu", 32: "conv_pw_13_relu"})
mobilenet("mobilenet_v2", "MobileNetV2", base_url=URL + "mobilenet_v2/",
          no_top=("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", None),
          top=("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", None),
          preprocessing="tf", paper="arXiv:1801.04381",
          strides={2: "block_1_expand_relu", 4: "block_3_expand_relu", 8: "block_6_expand_relu",
                   16: "block_13_expand_relu", 32: "out_relu"})
mobilenet("mobilenet_v3_small", "MobileNetV3Small", base_url=URL + "mobilenet_v3/",
          no_top=("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "d3e8ec802a04aa4fc771ee12a9a9b836"),
          top=("weights_mobilenet_v3_small_224_1.0_float.h5", "8768d4c2e7dee89b9d02b2d03d65d862"),
          preprocessing="model", paper="arXiv:1905.02244",
          strides={2: "conv_bn", 4: "expanded_conv_1_expand_bn", 8: "expanded_conv_3_expand_bn",
                   16: "expanded_conv_8_expand_bn", 32: "conv_1_bn"})
mobilenet("mobilenet_v3_large", "MobileNetV3Large", base_url=URL + "mobilenet_v3/",
          no_top=("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "07fb09a5933dd0c8eaafa16978110389"),
          top=("weights_mobilenet_v3_large_224_1.0_float.h5", "59e551e166be033d707958cf9e29a6a7"),
          preprocessing="model", paper="arXiv:1905.02244",
          strides={2: "expanded_conv_1_expand_bn", 4: "expanded_conv_3_expand_bn",
                   8: "expanded_conv_6_expand_bn", 16: "expanded_conv_12_expand_bn", 32: "conv_1_bn"})
