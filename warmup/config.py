"""The warm-up's own setting, read with the pipeline's one environment parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline import EnvReader


@dataclass(frozen=True)
class WarmupConfig:
    """`WARMUP`: run every model once on a representative input before reporting ready."""

    exercise: bool = True
    problems: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WarmupConfig:
        read = EnvReader(env)
        exercise = read.bool("WARMUP", True)
        return cls(exercise=exercise, problems=tuple(read.problems))
