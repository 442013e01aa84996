"""vast: the VAST vision-audio-subtitle-text omni-modality model, its training and its data pipeline."""

__version__ = "0.1.0"
