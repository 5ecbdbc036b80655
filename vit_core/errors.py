"""Errors a user can cause. Each carries a short message that says what to do next."""


class VitCoreError(Exception):
    """Base class for every error vit_core raises on purpose."""


class ImageError(VitCoreError):
    """The file is not an image we can use (empty, corrupt, too large, ...)."""


class CheckpointError(VitCoreError):
    """A checkpoint that cannot be loaded as a Vision Transformer."""


class DataError(VitCoreError):
    """A dataset that cannot be read, downloaded or trusted."""
