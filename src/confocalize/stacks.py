"""How the channels and z-planes of an image become network inputs, the same in training and inference.

A model sees one output plane at a time. Its input for plane ``z`` is, for each channel of its
*group*, the ``2k + 1`` planes ``z - k .. z + k`` (``k = context_slices``; 0 is plain 2D), channel
by channel: ``[c0 z-k, ..., c0 z+k, c1 z-k, ...]``. Near the ends of a stack the missing
neighbours repeat the end plane (indices are clamped), so every plane has a full input and a 2D
image works with any model. A group is one channel (``channels: separate``: one model applied to
each channel on its own) or all channels (``channels: joint``: the model's channels are the
data's). Both numpy and dask arrays go through :func:`network_input`. A time-lapse is enhanced frame by
frame (each frame as above); its channels' normalisation spans all frames (:func:`channel_views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from confocalize.errors import ConfocalizeError

Array = TypeVar("Array")


def as_czyx(data: Array, axes: str) -> Array:
    """View of ``data`` with all four axes C, Z, Y, X (missing ones of length 1)."""
    shape = [data.shape[axes.index(ax)] if ax in axes else 1 for ax in "CZYX"]  # type: ignore[attr-defined]
    return data.reshape(shape)  # type: ignore[attr-defined]


def channel_views(data: Array, axes: str) -> list[Array]:
    """Each channel of ``data`` with every other axis kept (all time points and planes): views of numpy arrays, lazy
    slices of dask arrays; an image without C is its only channel."""
    if "C" not in axes:
        return [data]
    c = axes.index("C")
    return [data[(slice(None),) * c + (i,)] for i in range(data.shape[c])]  # type: ignore[attr-defined, index]


def context_indices(z: int, n_planes: int, context: int) -> list[int]:
    """The ``2 * context + 1`` plane indices centred on ``z``, clamped to ``[0, n_planes)``."""
    return [min(max(z + dz, 0), n_planes - 1) for dz in range(-context, context + 1)]


def network_input(czyx: Array, channels: Sequence[int], z: int, context: int) -> Array:
    """``(len(channels) * (2 * context + 1), Y, X)`` input planes for output plane ``z`` of a ``(C, Z, Y, X)`` array."""
    planes = context_indices(z, czyx.shape[1], context)  # type: ignore[attr-defined]
    selected = [czyx[c, i] for c in channels for i in planes]  # type: ignore[index]
    return selected[0][None] if len(selected) == 1 else np.stack(selected)  # one plane: a view, not a copy


def data_groups(n_channels: int, joint: bool) -> list[list[int]]:
    """The channel groups of training data: all channels together (joint) or one at a time."""
    return [list(range(n_channels))] if joint else [[c] for c in range(n_channels)]


def model_groups(n_channels: int, in_channels: int, context: int, where: str) -> list[list[int]]:
    """The channel groups a model with ``in_channels`` inputs and ``context`` slices takes from ``n_channels``.

    A model whose input holds one channel's planes is applied to each channel; one that holds
    ``n_channels`` channels' planes takes them together. Anything else is a one-line error.
    """
    per_plane, rest = divmod(in_channels, 2 * context + 1)
    if rest or per_plane not in (1, n_channels):
        raise ConfocalizeError(
            f"{where}: has {n_channels} channel(s) but the model takes {in_channels / (2 * context + 1):g}; "
            "give images with that many channels (or check --axes)"
        )
    return data_groups(n_channels, joint=per_plane == n_channels)
