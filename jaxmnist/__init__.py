"""jaxmnist: backprop by hand in JAX, and a 12,088-parameter MNIST net in Flax."""

__version__ = "0.1.0"
