"""Exceptions with a message that is fit to show a user on one line."""


class MaskbatchError(Exception):
    """A problem the user can fix (bad argument, missing folder, wrong model...)."""


class ImageError(MaskbatchError):
    """One input image cannot be used; the message is the reason written to the manifest."""


class SkippedInput(ImageError):
    """An entry that is not a photo to read (a folder, a broken link, a FIFO, an unsupported
    format); the manifest lists it as skipped, with the message as the reason."""
