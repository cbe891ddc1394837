"""The names of the classifier's nets and of an architecture spec (no TensorFlow).

A leaf of :mod:`maskbatch.train`: the package, :mod:`maskbatch.train.fit` and
:mod:`maskbatch.train.architectures` all read these names from here, so none of them imports
another in a circle.
"""

from __future__ import annotations

from maskbatch.errors import MaskbatchError

ARCHITECTURES = ("compact", "seed", "backbone")
DEFAULT_ARCH = "compact+backbone"


def architecture_list(arch: str) -> list[str]:
    """The nets of an architecture spec: one name, or names joined by '+' (an ensemble of one net
    per name, e.g. 'compact+backbone'); raises MaskbatchError on an unknown or repeated name."""

    names = arch.split("+")
    for name in names:
        if name not in ARCHITECTURES:
            raise MaskbatchError(f"unknown architecture {name!r}; choose from "
                                 f"{', '.join(ARCHITECTURES)}, or join them with '+'")
    if len(set(names)) < len(names):
        raise MaskbatchError(f"architecture {arch!r} names a net twice")
    return names
