"""Shared fixtures. Real SQLite files under tmp_path, real onnxruntime, real gRPC on port 0."""
