"""Serving: SavedModel export for TensorFlow Serving, a local stand-in server, and a gRPC client."""
