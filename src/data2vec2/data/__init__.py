"""The data path every modality shares: seeded sample streams, the batch layout, the resumable sampler."""
