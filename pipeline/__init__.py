"""Preprocessing stage: text corpora → TFRecord windows + vocabulary (Apache Beam)."""
