"""Dense encoders where segmentation models are built: segmentation_models_pytorch, torchgeo."""

__all__: list[str] = []
