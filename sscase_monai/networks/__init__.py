"""Networks: SS_CASE_UNet, its attention blocks and its MONAI EfficientNet encoders."""

from sscase_monai.networks.blocks import CoordinateAttention, SqueezeExcitation
from sscase_monai.networks.encoders import (
    ENCODER_NAMES,
    LITE0_INPUT_MEAN,
    LITE0_INPUT_STD,
    EfficientNetSkipEncoder,
    PretrainedWeightsError,
    lite0_weights_path,
    load_pretrained_encoder,
    read_state_dict,
)
from sscase_monai.networks.sscase_unet import (
    SegmentationHead,
    SSCASEDecoder,
    SSCASEUNet,
    UpBlock,
    enable_mc_dropout,
)

__all__ = [
    "ENCODER_NAMES",
    "LITE0_INPUT_MEAN",
    "LITE0_INPUT_STD",
    "CoordinateAttention",
    "EfficientNetSkipEncoder",
    "PretrainedWeightsError",
    "SSCASEDecoder",
    "SSCASEUNet",
    "SegmentationHead",
    "SqueezeExcitation",
    "UpBlock",
    "enable_mc_dropout",
    "lite0_weights_path",
    "load_pretrained_encoder",
    "read_state_dict",
]
