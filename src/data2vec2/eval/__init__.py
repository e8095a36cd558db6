"""Evaluation protocols for frozen features: linear probe and weighted kNN."""
