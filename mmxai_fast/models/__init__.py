"""Small 3D networks built in code, for tests, benchmarks and the demo (no weights are downloaded).

- :class:`VGG3D`: the VGG-like glioma-grade classifier of Jin et al. (conv blocks, then an MLP head);
  its last ``Conv3d`` is the Grad-CAM layer.
- :class:`DenseNet3D`: a small DenseNet-BC (Dasanayaka et al.), dense blocks with transitions.
"""
from .cnn3d import DenseNet3D, VGG3D, last_conv_layer

__all__ = ["VGG3D", "DenseNet3D", "last_conv_layer"]
