"""Generator and discriminator networks (torch stays inside nets/, train and predict)."""

from confocalize.nets.patchgan import PatchGAN
from confocalize.nets.unet import UNet

__all__ = ["PatchGAN", "UNet"]
