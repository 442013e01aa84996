"""vast: the VAST vision-audio-subtitle-text omni-modality model, its training and its data pipeline."""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "load_model":  # imported on first use: `import vast` stays light
        from vast.api import load_model

        return load_model
    raise AttributeError(f"module 'vast' has no attribute {name!r}")
