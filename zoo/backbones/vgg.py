"""VGG16 and VGG19 (keras.applications)."""
from functools import partial

from zoo.backbones.spec import register_keras_application

URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
vgg = partial(register_keras_application, family="vgg", preprocessing="caffe",
              paper="arXiv:1409.1556", license="CC BY 4.0 (weights), Apache-2.0 (code)")

vgg("vgg16", "VGG16", base_url=URL + "vgg16/",
    no_top=("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    top=("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    strides={2: "block2_conv2", 4: "block3_conv3", 8: "block4_conv3", 16: "block5_conv3", 32: "block5_pool"})
vgg("vgg19", "VGG19", base_url=URL + "vgg19/",
    no_top=("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    top=("vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
    strides={2: "block2_conv2", 4: "block3_conv4", 8: "block4_conv4", 16: "block5_conv4", 32: "block5_pool"})
