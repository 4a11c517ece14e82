"""facefusion-fn's HTTP function: routes, events, storage I/O, errors and metrics. Never touches ONNX."""
