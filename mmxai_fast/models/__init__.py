"""Small 3D networks built in code, for tests, benchmarks and the demo (no weights are downloaded).

- :class:`VGG3D`: the VGG-like glioma-grade classifier of Jin et al. (conv blocks, then an MLP head);
  its last ``Conv3d`` is the Grad-CAM layer.
- :class:`DenseNet3D`: a small DenseNet-BC (Dasanayaka et al.), dense blocks with transitions.
- :class:`VQEncoderDecoder`: the 2D VQ segmentation network of Kobayashi et al. (4x256x256 ->
  64x8x8 latent, 512x64 codebook -> logits at 256x256).
"""
from .cnn3d import DenseNet3D, VGG3D, last_conv_layer
from .vq_autoencoder import VQEncoderDecoder, VQOutput

__all__ = ["VGG3D", "DenseNet3D", "last_conv_layer", "VQEncoderDecoder", "VQOutput"]
