"""ResNet V1 (caffe preprocessing) and V2 (tf preprocessing) from keras.applications."""
from functools import partial

from zoo.backbones.spec import register_keras_application

URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
resnet_v1 = partial(register_keras_application, family="resnet", base_url=URL,
                    preprocessing="caffe", paper="arXiv:1512.03385", license="MIT (weights), Apache-2.0 (code)")
resnet_v2 = partial(register_keras_application, family="resnet_v2", base_url=URL,
                    preprocessing="tf", paper="arXiv:1603.05027")


def _v1_strides(stage3_blocks, stage4_blocks):
    return {2: "conv1_relu", 4: "conv2_block3_out", 8: f"conv3_block{stage3_blocks}_out",
            16: f"conv4_block{stage4_blocks}_out", 32: "conv5_block3_out"}


def _v2_strides(stage3_blocks, stage4_blocks):
    # In V2 the stride-2 convolution sits in the *last* block of a stage, so its first
    # ReLU is the last full-resolution activation.
    return {2: "conv1_conv", 4: "conv2_block3_1_relu", 8: f"conv3_block{stage3_blocks}_1_relu",
            16: f"conv4_block{stage4_blocks}_1_relu", 32: "post_relu"}


resnet_v1("resnet50", "ResNet50", strides=_v1_strides(4, 6),
          no_top=("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
          top=("resnet50_weights_tf_dim_ordering_tf_kernels.h5", "2cb95161c43110f7111970584f804107"))
resnet_v1("resnet101", "ResNet101", strides=_v1_strides(4, 23),
          no_top=("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "88cf7a10940856eca736dc7b7e228a21"),
          top=("resnet101_weights_tf_dim_ordering_tf_kernels.h5", "f1aeb4b969a6efcfb50fad2f0c20cfc5"))
resnet_v1("resnet152", "ResNet152", strides=_v1_strides(8, 36),
          no_top=("resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
          top=("resnet152_weights_tf_dim_ordering_tf_kernels.h5", "100835be76be38e30d865e96f2aaae62"))
resnet_v2("resnet50_v2", "ResNet50V2", strides=_v2_strides(4, 6),
          no_top=("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "fac2f116257151a9d068a22e544a4917"),
          top=("resnet50v2_weights_tf_dim_ordering_tf_kernels.h5", "3ef43a0b657b3be2300d5770ece849e0"))
resnet_v2("resnet101_v2", "ResNet101V2", strides=_v2_strides(4, 23),
          no_top=("resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "c0ed64b8031c3730f411d2eb4eea35b5"),
          top=("resnet101v2_weights_tf_dim_ordering_tf_kernels.h5", "6343647c601c52e1368623803854d971"))
resnet_v2("resnet152_v2", "ResNet152V2", strides=_v2_strides(8, 36),
          no_top=("resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "ed17cf2e0169df9d443503ef94b23b33"),
          top=("resnet152v2_weights_tf_dim_ordering_tf_kernels.h5", "a49b44d1979771252814e80f8ec446f9"))
