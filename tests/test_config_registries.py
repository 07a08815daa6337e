"""The config schema's closed choices name exactly what the registries hold.

A ``Literal`` in the schema is checked before anything runs; the registry is
what runs. A plug-in added to one and not the other is either refused by a
valid-looking recipe or accepted by the schema and then unknown at run time.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from patrol_compress import privacy_config, recipe


def choices(literal: object) -> list[str]:
    return sorted(str(v) for v in typing.get_args(literal))


def field_choices(model: type[BaseModel], name: str) -> list[str]:
    return choices(model.model_fields[name].annotation)


def shipped(names: list[str]) -> list[str]:
    """Leave out plug-ins that test modules register (named ``test-...``)."""
    return [n for n in names if not n.startswith("test-")]


def test_attack_names_are_the_attack_registry() -> None:
    from patrol_compress.attacks import ATTACKS, DEFAULT_ATTACKS

    assert choices(privacy_config.AttackName) == shipped(ATTACKS.names())
    assert set(DEFAULT_ATTACKS) <= set(ATTACKS.names())


def test_defense_names_are_the_defense_registry() -> None:
    from patrol_compress.defenses import DEFENSES

    assert choices(privacy_config.DefenseName) == shipped(DEFENSES.names())
    assert sorted(privacy_config.DEFAULT_STRENGTHS) == shipped(DEFENSES.names())


def test_decoder_families_are_the_family_registry() -> None:
    from patrol_compress.attacks.decoders import FAMILIES

    assert choices(privacy_config.DecoderFamily) == shipped(FAMILIES.names())


def test_data_kinds_are_the_dataset_registry() -> None:
    from patrol_compress.data import DATASETS, _load_builtin_loaders

    _load_builtin_loaders()
    assert field_choices(recipe.DataConfig, "kind") == shipped(DATASETS.names())


def test_export_targets_of_the_cli_are_the_exporter_registry() -> None:
    from patrol_compress.cli.export import TARGETS
    from patrol_compress.exporters import EXPORTERS

    assert sorted(TARGETS) == shipped(EXPORTERS.names())
