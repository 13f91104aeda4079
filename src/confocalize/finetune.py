"""Fine-tuning from a partner's model (``train --init-from``): settings taken from the parent, fit checks, lineage.

The new run starts from the package's generator weights with a fresh discriminator and the whole
recipe (fidelity phase first). It takes the parent's generator, normalisation and z-context settings
for every one of them that the run's config does not set itself, so ``--init-from`` alone fine-tunes
any package; a setting the config sets differently, or pairs with other channels, is refused in one
line that says what differs. The new package's provenance names its parent (name and package hash)
followed by the parent's own lineage, so ``confocalize info`` traces a model across institutes.
"""

from __future__ import annotations

from typing import TypeVar

from confocalize.config import Strict, TrainConfig
from confocalize.errors import ConfocalizeError
from confocalize.package import ModelPackage, Parent, load_package

Settings = TypeVar("Settings", bound=Strict)


def parent_package(config: TrainConfig) -> tuple[ModelPackage, TrainConfig]:
    """The package ``config.init_from`` names (path or built-in name), and ``config`` with the parent's
    settings where it sets none of its own; refused when a setting of the config contradicts the parent."""
    assert config.init_from is not None
    package = load_package(config.init_from)
    data = config.data
    if "context_slices" not in data.model_fields_set:
        data = data.model_copy(update={"context_slices": package.context_slices})
    inherited = config.model_copy(update={
        "generator": _inherit(config.generator, package.generator_config),
        "data": data.model_copy(update={"normalization": _inherit(data.normalization, package.normalization)}),
    })  # fmt: skip
    _refuse(config.init_from, _setting_differences(package, inherited))
    return package, inherited


def check_channels(package: ModelPackage, config: TrainConfig, channels: tuple[int, int]) -> None:
    """Refuse a parent whose input and output channels differ from the run's pairs."""
    if (package.in_channels, package.out_channels) != channels:
        assert config.init_from is not None
        _refuse(config.init_from, [f"it maps {package.in_channels} -> {package.out_channels} channels, "
                                   f"these pairs {channels[0]} -> {channels[1]}"])  # fmt: skip


def _inherit(mine: Settings, theirs: Settings) -> Settings:
    """``theirs`` with the values ``mine`` sets explicitly laid over it."""
    return type(mine).model_validate({**theirs.model_dump(), **mine.model_dump(include=mine.model_fields_set)})


def _refuse(name: str, differences: list[str]) -> None:
    if differences:
        raise ConfocalizeError(
            f"{name}: cannot fine-tune from this model: {'; '.join(differences)}; "
            "train with the model's settings or start without --init-from"
        )


def _setting_differences(package: ModelPackage, config: TrainConfig) -> list[str]:
    """What the run's (inherited) settings contradict in the package, in words (empty when it fits)."""
    found = []
    if package.generator_config != config.generator:
        found.append(f"its generator is {_settings(package.generator_config.model_dump())}, this run's "
                     f"{_settings(config.generator.model_dump())}")  # fmt: skip
    if package.context_slices != config.data.context_slices:
        found.append(f"its z-context is {package.context_slices} planes, this run's data.context_slices {config.data.context_slices}")
    if package.normalization != config.data.normalization:
        mine, theirs = config.data.normalization, package.normalization
        found.append(f"it normalises with {_settings(theirs.model_dump())}, this run with {_settings(mine.model_dump())}")
    return found


def _settings(values: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"


def lineage(name: str, package: ModelPackage) -> list[Parent]:
    """The lineage of a model fine-tuned from ``package`` (given as ``name``): the parent, then its lineage."""
    assert package.sha256 is not None, "a loaded package has a hash"
    parent = Parent(name=name, sha256=package.sha256, confocalize_version=package.confocalize_version)
    return [parent, *package.provenance.lineage]
