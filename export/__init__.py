"""Export of the student to ONNX / ORT / Core ML, verification, and benchmarks."""
