"""jaxnas: neural architecture search for 3D medical image segmentation in JAX/Flax."""
