"""Everything driven by calibration data: data (loading samples), activations, hessian, obs,
sparsify, reconstruct, fidelity, and distill with torchgraph (the ONNX graph run in PyTorch)."""
