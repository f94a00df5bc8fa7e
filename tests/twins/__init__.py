"""NumPy twins of the C kernels, written independently of them, in float64."""
