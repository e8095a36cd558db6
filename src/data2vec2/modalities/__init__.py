"""One module per modality: its local encoder, positions, masker, decoder and data pipeline."""
