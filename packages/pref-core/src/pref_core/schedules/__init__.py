"""Noise processes: DDPM-family schedules and rectified flow, as pure tensor math.

Both kinds implement :class:`pref_core.protocols.NoiseProcess`: they sample training timesteps,
say what the denoiser is called with, and give per-sample coefficients (a, b, c, d) with
``x_t = a·x0 + b·ε`` and ``target = c·x0 + d·ε``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pref_core.schedules._common import NoiseCoefficients
from pref_core.schedules.ddpm import (
    DDPMSchedule,
    betas_for_schedule,
    rescale_zero_terminal_snr,
)
from pref_core.schedules.flow import (
    FlowMatchingSchedule,
    image_seq_len,
    resolution_shift_mu,
    shift_sigmas,
    time_shift,
)


def schedule_from_config(
    config: Mapping[str, Any], **flow_overrides: Any
) -> DDPMSchedule | FlowMatchingSchedule:
    """Pick the process a diffusers scheduler config describes and build it.

    ``FlowMatch*`` schedulers (SD3, FLUX.1) give a :class:`FlowMatchingSchedule` (extra keyword
    arguments set its timestep density); every other scheduler (DDPM, DDIM, Euler, DPM-Solver,
    PNDM, ... as shipped with SD 1.5/SDXL) gives a :class:`DDPMSchedule`.
    """
    class_name = str(config.get("_class_name", ""))
    if "FlowMatch" in class_name:
        return FlowMatchingSchedule.from_config(config, **flow_overrides)
    if flow_overrides:
        raise ValueError(
            f"{sorted(flow_overrides)} apply to flow-matching schedules only, "
            f"but the config describes {class_name or 'a DDPM-family scheduler'}"
        )
    return DDPMSchedule.from_config(config)


def schedule_from_scheduler(
    scheduler: Any, **flow_overrides: Any
) -> DDPMSchedule | FlowMatchingSchedule:
    """Like :func:`schedule_from_config`, from a live diffusers scheduler object.

    Reads ``scheduler.config`` and the class name; diffusers itself is not imported.
    """
    config = dict(getattr(scheduler, "config", {}) or {})
    if not config:
        raise TypeError(
            f"{type(scheduler).__name__} has no `config`; pass a diffusers scheduler or use "
            "schedule_from_config with a config dict"
        )
    config.setdefault("_class_name", type(scheduler).__name__)
    return schedule_from_config(config, **flow_overrides)


__all__ = [
    "DDPMSchedule",
    "FlowMatchingSchedule",
    "NoiseCoefficients",
    "betas_for_schedule",
    "image_seq_len",
    "rescale_zero_terminal_snr",
    "resolution_shift_mu",
    "schedule_from_config",
    "schedule_from_scheduler",
    "shift_sigmas",
    "time_shift",
]
