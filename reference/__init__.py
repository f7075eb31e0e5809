"""Slow, obvious NumPy transcriptions of SPEC.md in float64: the oracle the kernels are tested against."""
