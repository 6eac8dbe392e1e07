"""Built-in workloads by name, with presets. Torch-free: the login node validates specs here."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.workloads import gpt_config, jit_config
from jobs.workloads.base import Builder


@dataclass(frozen=True)
class BuiltinWorkload:
    name: str
    description: str
    config_class: type
    presets: Mapping[str, Any]
    builder_path: str  # "module:function", imported only on the node

    def resolve(self, preset: str, overrides: Mapping[str, Any]) -> Any:
        """The preset's config with ``overrides`` applied (names and types already validated)."""
        return dataclasses.replace(self.presets[preset], **dict(overrides))

    def override_types(self) -> dict[str, type]:
        hints = typing.get_type_hints(self.config_class)
        return {f.name: hints[f.name] for f in dataclasses.fields(self.config_class)}


BUILTIN: dict[str, BuiltinWorkload] = {
    "jit": BuiltinWorkload(
        name="jit",
        description="JiT: plain pixel-space diffusion transformer (the seed's JiT-B/4)",
        config_class=jit_config.JiTConfig,
        presets=jit_config.PRESETS,
        builder_path="jobs.workloads.jit:build",
    ),
    "gpt": BuiltinWorkload(
        name="gpt",
        description="GPT-2-style decoder-only language model",
        config_class=gpt_config.GPTConfig,
        presets=gpt_config.PRESETS,
        builder_path="jobs.workloads.gpt:build",
    ),
}


def import_callable(path: str) -> Builder:
    """Import ``module:function``; raises ImportError/AttributeError with the path named."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from exc
