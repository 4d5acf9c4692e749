import types

import pytest

from pref_core._optional import import_optional
from pref_core.schedules import (
    DDPMSchedule,
    FlowMatchingSchedule,
    schedule_from_scheduler,
)


def test_missing_optional_module_names_the_extra():
    with pytest.raises(ImportError, match=r"pref-core\[diffusers\]") as info:
        import_optional("transformers.definitely_not_a_module", purpose="loading CLIP")
    assert "loading CLIP" in str(info.value)
    with pytest.raises(ImportError, match="pip install nosuchpkg"):
        import_optional("nosuchpkg")
    assert import_optional("json").dumps([1]) == "[1]"


def test_schedule_from_a_scheduler_like_object():
    # Any object with a diffusers-style `.config` works; the class name picks the process.
    FlowMatchEulerDiscreteScheduler = type("FlowMatchEulerDiscreteScheduler", (), {})
    flow = FlowMatchEulerDiscreteScheduler()
    flow.config = {"num_train_timesteps": 1000, "shift": 3.0}
    assert isinstance(schedule_from_scheduler(flow), FlowMatchingSchedule)
    ddim = types.SimpleNamespace(
        config={"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    )
    assert isinstance(schedule_from_scheduler(ddim), DDPMSchedule)
    with pytest.raises(TypeError, match="config"):
        schedule_from_scheduler(object())
