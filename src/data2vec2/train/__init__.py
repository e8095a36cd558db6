"""The modality-agnostic training loop and its parts."""
