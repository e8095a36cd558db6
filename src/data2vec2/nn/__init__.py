"""Modality-agnostic building blocks: transformer blocks, conv decoders, the EMA teacher."""
