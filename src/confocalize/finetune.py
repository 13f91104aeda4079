"""Fine-tuning from a partner's model (``train --init-from``): fit checks and the lineage it records.

The new run starts from the package's generator weights with a fresh discriminator and the whole
recipe (fidelity phase first). A package that does not fit the run — other generator settings,
channels, z-context or normalisation — is refused in one line that says what differs. The new
package's provenance names its parent (name and package hash) followed by the parent's own lineage,
so ``confocalize info`` traces a model across institutes.
"""

from __future__ import annotations

from confocalize.config import TrainConfig
from confocalize.errors import ConfocalizeError
from confocalize.package import ModelPackage, Parent, load_package


def parent_package(config: TrainConfig, channels: tuple[int, int]) -> ModelPackage:
    """The package ``config.init_from`` names (path or built-in name), checked against the run."""
    assert config.init_from is not None
    package = load_package(config.init_from)
    differences = _differences(package, config, channels)
    if differences:
        raise ConfocalizeError(
            f"{config.init_from}: cannot fine-tune from this model: {'; '.join(differences)}; "
            "train with the model's settings or start without --init-from"
        )
    return package


def _differences(package: ModelPackage, config: TrainConfig, channels: tuple[int, int]) -> list[str]:
    """What differs between the package and the run, in words (empty when it fits)."""
    found = []
    if package.generator_config != config.generator:
        found.append(f"its generator is {_settings(package.generator_config.model_dump())}, this run's "
                     f"{_settings(config.generator.model_dump())}")  # fmt: skip
    if (package.in_channels, package.out_channels) != channels:
        found.append(f"it maps {package.in_channels} -> {package.out_channels} channels, these pairs {channels[0]} -> {channels[1]}")
    if package.context_slices != config.data.context_slices:
        found.append(f"its z-context is {package.context_slices} planes, this run's data.context_slices {config.data.context_slices}")
    if package.normalization != config.data.normalization:
        mine, theirs = config.data.normalization, package.normalization
        found.append(f"it normalises with percentiles {theirs.low}-{theirs.high}, this run with {mine.low}-{mine.high}")
    return found


def _settings(values: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"


def lineage(name: str, package: ModelPackage) -> list[Parent]:
    """The lineage of a model fine-tuned from ``package`` (given as ``name``): the parent, then its lineage."""
    assert package.sha256 is not None, "a loaded package has a hash"
    parent = Parent(name=name, sha256=package.sha256, confocalize_version=package.confocalize_version)
    return [parent, *package.provenance.lineage]
