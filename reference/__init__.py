"""Slow, obvious NumPy transcriptions of docs/operators.md in float64: the oracle the kernels are tested
against."""
