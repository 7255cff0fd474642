"""The shared training loop and the encoding of samples into model inputs."""
