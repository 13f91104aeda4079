"""confocalize: wide-field to confocal image enhancement with a conditional GAN."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("confocalize")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from confocalize.errors import ConfocalizeError, RegistrationError

__all__ = ["ConfocalizeError", "RegistrationError", "__version__"]
