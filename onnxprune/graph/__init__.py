"""Reading, sizing, running and checking ONNX graphs: load (read, save, external data), shapes (free
input dims), capture (every shape from a real run), verify (the pruned model is a drop-in), layers
(the only module that knows weight layouts: which axis of a Conv/Gemm/MatMul weight is in and out)."""
