"""sscase-monai: SS_CASE_UNet semi-supervised segmentation of the fetal cerebellum in 2-D ultrasound, on MONAI."""

__version__ = "0.1.0"
