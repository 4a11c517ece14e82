"""The warm-up's own setting, read with the pipeline's one environment parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline import EnvReader


@dataclass(frozen=True)
class WarmupConfig:
    """`WARMUP`: run every model once on a representative input before reporting ready.
    `MODEL_WAIT_S`: how often to look again for a model set that is not there yet."""

    exercise: bool = True
    model_wait_s: float = 5.0
    problems: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WarmupConfig:
        read = EnvReader(env)
        exercise = read.bool("WARMUP", True)
        wait = read.float("MODEL_WAIT_S", 5.0, minimum=0.05)
        return cls(exercise=exercise, model_wait_s=wait, problems=tuple(read.problems))
