"""Soft attention (Datta et al. 2021), as the paper applies it to CNN feature maps.

For a feature map t of shape [N, H, W, C]:
  1. a 3x3 convolution over *all* C channels gives `heads` score maps [N, H, W, heads] (ReLU, as in
     the original);
  2. each head is normalised with a softmax over the H*W spatial positions;
  3. the heads are summed into one map alpha [N, H, W];
  4. the output is gamma * t * alpha, with gamma a learnable scalar.

The widely copied Keras implementation runs a Conv3D over the channel axis with stride C and
'same' padding, which in effect reads only the first channels of t; here the convolution spans
every channel, which is what the paper's equations say.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="medrobust")
class SoftAttention(keras.layers.Layer):
    """Multi-head spatial soft attention; `call` returns `(attended_features, maps)`.

    `maps` is [N, H, W, heads]: each head's softmax over space (every head sums to 1).
    """

    def __init__(self, heads: int = 16, kernel_size: int = 3, gamma_init: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"SoftAttention expects heads >= 1, got {heads!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SoftAttention expects an odd kernel_size >= 1, got {kernel_size!r}")
        self.heads = heads
        self.kernel_size = kernel_size
        self.gamma_init = float(gamma_init)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"SoftAttention expects a feature map [N, H, W, C] with known C, got {input_shape}")
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, self.heads),
            initializer="he_uniform",
        )
        self.bias = self.add_weight(name="bias", shape=(self.heads,), initializer="zeros")
        # A small non-zero start keeps gradients flowing into the score convolution from step one
        # while the attended branch begins close to silent.
        self.gamma = self.add_weight(
            name="gamma", shape=(), initializer=keras.initializers.Constant(self.gamma_init)
        )

    def call(self, inputs):
        scores = ops.relu(ops.conv(inputs, self.kernel, strides=1, padding="same") + self.bias)
        shape = ops.shape(scores)
        flat = ops.reshape(scores, (shape[0], shape[1] * shape[2], self.heads))
        # A stable softmax written out: keras warns (and our tests treat warnings as errors) when
        # the spatial axis has size 1, which is legitimate for small inputs.
        flat = ops.exp(flat - ops.max(flat, axis=1, keepdims=True))
        maps = ops.reshape(flat / ops.sum(flat, axis=1, keepdims=True), shape)
        alpha = ops.sum(maps, axis=-1, keepdims=True)
        return self.gamma * inputs * alpha, maps

    def compute_output_shape(self, input_shape):
        return tuple(input_shape), (*tuple(input_shape[:3]), self.heads)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "kernel_size": self.kernel_size, "gamma_init": self.gamma_init}
