"""Third-party models without code: an ONNX or TorchScript file plus a manifest YAML."""
