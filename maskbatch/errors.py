"""Exceptions with a message that is fit to show a user on one line."""


class MaskbatchError(Exception):
    """A problem the user can fix (bad argument, missing folder, wrong model...)."""


class ImageError(MaskbatchError):
    """One input image cannot be used; the message is the reason written to the manifest."""
