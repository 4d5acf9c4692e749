"""IMG: calibrating diffusion models via implicit multimodal guidance (Guo et al., ICCV 2025).

IMG trains no diffusion weights: an MLLM misalignment detector reads a generated image with its
prompt, an Implicit Aligner corrects the image's IP-Adapter tokens with the MLLM's hidden
states, and the model re-generates from the same seed. The math (Eq. 4/6/7 and the reference
update) imports with torch alone; the models load lazily::

    from pref_img import ImplicitAligner, AlignerConfig, img_loss
    from pref_img.pipeline import load_img          # or pref_apps.models.load_for_sampling
    from pref_img.detector import load_detector
    from pref_img.image_prompt import load_image_prompt_model

See docs/methods/img.md.
"""

from pref_img.__about__ import __version__
from pref_img.aligner import AlignerConfig, ImplicitAligner
from pref_img.objective import (
    ReferenceUpdate,
    base_loss,
    copy_into,
    feature_distance,
    img_loss,
    preference_loss,
    preference_margin,
)
from pref_img.pipeline import IMGModel, IMGResult, IMGSettings, load_img, save_img

__all__ = [
    "AlignerConfig",
    "IMGModel",
    "IMGResult",
    "IMGSettings",
    "ImplicitAligner",
    "ReferenceUpdate",
    "__version__",
    "base_loss",
    "copy_into",
    "feature_distance",
    "img_loss",
    "load_img",
    "preference_loss",
    "preference_margin",
    "save_img",
]
