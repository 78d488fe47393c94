"""Audio in: decoding uploaded bytes to float32 samples, and the numpy analysis of them."""
