"""sparse-ulm: deep-learning 3D ultrasound localization microscopy on sparse tensors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-ulm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"
