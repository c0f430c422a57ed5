"""DenseNet 121/169/201 (keras.applications; torch-style preprocessing)."""
from functools import partial

from zoo.backbones.spec import register_keras_application

URL = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
STRIDES = {2: "conv1_relu", 4: "pool2_conv", 8: "pool3_conv", 16: "pool4_conv", 32: "relu"}
densenet = partial(register_keras_application, family="densenet", base_url=URL,
                   preprocessing="torch", strides=STRIDES, paper="arXiv:1608.06993",
                   license="BSD-3-Clause (weights), Apache-2.0 (code)")

densenet("densenet121", "DenseNet121",
         no_top=("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
         top=("densenet121_weights_tf_dim_ordering_tf_kernels.h5", "9d60b8095a5708f2dcce2bca79d332c7"))
densenet("densenet169", "DenseNet169",
         no_top=("densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", "b8c4d4c20dd625c148057b9ff1c1176b"),
         top=("densenet169_weights_tf_dim_ordering_tf_kernels.h5", "d699b8f76981ab1b30698df4c175e90b"))
densenet("densenet201", "DenseNet201",
         no_top=("densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "c13680b51ded0fb44dff2d8f86ac8bb1"),
         top=("densenet201_weights_tf_dim_ordering_tf_kernels.h5", "1ceb130c1ea1b78c3bf6114dbdfd8807"))
