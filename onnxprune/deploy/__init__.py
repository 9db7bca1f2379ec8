"""Where the model runs: timing (statistics), runners (onnxruntime backends, bench feeds), gpu
(TensorRT engines), fp16 (conversion for TensorRT 11), sparse24 (2:4 eligibility)."""
