"""Xception and InceptionV3 (keras.applications; 'valid' padding, so feature maps are not
exact powers of two of the input and decoders resize to each skip's own size)."""
from zoo.backbones.spec import register_keras_application

URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

register_keras_application(
    "xception", "Xception", family="xception", preprocessing="tf", default_size=299, min_size=71,
    base_url=URL + "xception/", paper="arXiv:1610.02357",
    no_top=("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
    top=("xception_weights_tf_dim_ordering_tf_kernels.h5", "0a58e3b7378bc2990ea3b43d5981f1f6"),
    strides={2: "block2_sepconv2_bn", 4: "block3_sepconv2_bn", 8: "block4_sepconv2_bn",
             16: "block13_sepconv2_bn", 32: "block14_sepconv2_act"})

# InceptionV3's early layers carry only Keras auto-generated names (conv2d_N, activation_N),
# which change with whatever was built before in the session; only the named "mixed"
# blocks are stable, so strides 2 and 4 are not offered.
register_keras_application(
    "inception_v3", "InceptionV3", family="inception", preprocessing="tf", default_size=299, min_size=75,
    base_url=URL + "inception_v3/", paper="arXiv:1512.00567",
    no_top=("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "bcbd6486424b2319ff4ef7d526e38f63"),
    top=("inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "9a0d58056eeedaa3f26cb7ebd46da564"),
    strides={8: "mixed2", 16: "mixed7", 32: "mixed10"})
