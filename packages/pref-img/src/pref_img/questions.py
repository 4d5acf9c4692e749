"""Misalignment questions: the text the MLLM detector reads next to the image (IMG supp. A.3).

IMG finetunes its MLLM on (original image, edited prompt, edit instruction) triplets: the model
sees the image and a question built from the edited prompt, e.g. "How can the <image> match the
intended prompt: <prompt>?", and learns to answer with the edit instruction. One of 100 question
wordings is drawn per training example so that the model learns the task rather than one string
(supp. A.3: "we randomly select one of 100 different misalignment detection questions").

The paper does not publish its 100 questions; these are our own wordings of the same request.
Each holds exactly one ``{prompt}`` placeholder and asks what must change for the image to match
that prompt. The image itself is not named by a placeholder: each model's chat format puts its
image token(s) before the question (see :mod:`pref_img.detector`).
"""

from __future__ import annotations

import torch

__all__ = ["INFERENCE_TEMPLATE", "QUESTION_TEMPLATES", "question", "sample_question"]

QUESTION_TEMPLATES: tuple[str, ...] = (
    "How can the image match the intended prompt: {prompt}?",
    "What should change so that this image matches the prompt: {prompt}?",
    "How do I edit this picture so it fits the description: {prompt}?",
    "What edit would make the image agree with the prompt: {prompt}?",
    "The intended prompt was: {prompt}. How should the image be changed to match it?",
    "Which change brings this image in line with the prompt: {prompt}?",
    "How would you fix this image so that it shows: {prompt}?",
    "What needs to be edited for the picture to match: {prompt}?",
    "Give the edit that makes the image correspond to the prompt: {prompt}.",
    "How can this picture be corrected to match the text: {prompt}?",
    "The image should depict: {prompt}. What must be changed?",
    "What instruction would turn this image into one that matches: {prompt}?",
    "How should the image be modified so it follows the prompt: {prompt}?",
    "Tell me how to change the image so it matches the caption: {prompt}.",
    "What is wrong with this image given the prompt: {prompt}, and how do I fix it?",
    "Describe the edit needed for the image to match: {prompt}.",
    "How can I make this image consistent with the prompt: {prompt}?",
    "What one change makes the picture match the intended description: {prompt}?",
    "Suggest an edit so that the image reflects the prompt: {prompt}.",
    "How do we get this image to match what was asked for: {prompt}?",
    "The prompt reads: {prompt}. What should be edited in the image?",
    "How does this image need to change to fit the prompt: {prompt}?",
    "What would you change in this picture to match: {prompt}?",
    "Write the editing instruction that aligns the image with: {prompt}.",
    "How can the picture be adjusted to fit the intended prompt: {prompt}?",
    "If the goal is: {prompt}, how should this image be edited?",
    "What is the edit that makes this picture show: {prompt}?",
    "How should I alter this image so that it matches the text prompt: {prompt}?",
    "Given the target prompt: {prompt}, what should be changed in the image?",
    "Which edit aligns this image with the description: {prompt}?",
    "How could this image be edited to match the requested prompt: {prompt}?",
    "What modification would make the image match: {prompt}?",
    "Explain how to change the picture so that it matches: {prompt}.",
    "What has to change in this image for it to show: {prompt}?",
    "The user asked for: {prompt}. How should this image be fixed?",
    "How would you edit the image to satisfy the prompt: {prompt}?",
    "Give one instruction that makes the image agree with: {prompt}.",
    "What should be done to this picture so it matches the prompt: {prompt}?",
    "How is this image to be changed to represent: {prompt}?",
    "What correction brings the image closer to the prompt: {prompt}?",
    "Tell me the edit that turns this picture into: {prompt}.",
    "How can the image be made faithful to the prompt: {prompt}?",
    "What change is needed so the image depicts the prompt: {prompt}?",
    "Compared with the prompt: {prompt}, what should be edited in this image?",
    "How do I change this image so it follows the description: {prompt}?",
    "What must I edit so the picture matches the prompt text: {prompt}?",
    "Name the edit that makes this image match: {prompt}.",
    "How should this picture be revised to fit: {prompt}?",
    "What instruction fixes the image for the prompt: {prompt}?",
    "How can the image be brought into agreement with: {prompt}?",
    "The intended description is: {prompt}. What edit does the image need?",
    "How would I make this image look like the prompt: {prompt}?",
    "What would make this picture a correct rendering of: {prompt}?",
    "Which edit should be applied to the image to match: {prompt}?",
    "How to make the image match the intended prompt: {prompt}?",
    "What should be changed in the picture according to the prompt: {prompt}?",
    "How can this image be edited to better match: {prompt}?",
    "What is the missing change that would make the image show: {prompt}?",
    "Provide the edit instruction that makes this image fit: {prompt}.",
    "How do I correct the picture so it shows what the prompt says: {prompt}?",
    "What edit would reconcile this image with the prompt: {prompt}?",
    "How should the image be updated to match the intended text: {prompt}?",
    "In order to match: {prompt}, what should this image change?",
    "What does this image need so that it matches: {prompt}?",
    "How can the picture be edited to agree with the intended prompt: {prompt}?",
    "What adjustment would make the image match the caption: {prompt}?",
    "How should the image change to become: {prompt}?",
    "State the edit that makes this image consistent with: {prompt}.",
    "How do I turn this image into a match for the prompt: {prompt}?",
    "What would you edit so the picture fits the prompt: {prompt}?",
    "The image was meant to show: {prompt}. How should it be edited?",
    "What change to the image would satisfy the prompt: {prompt}?",
    "How can one edit this picture to match the description: {prompt}?",
    "Which instruction makes this image match the intended prompt: {prompt}?",
    "How could the picture be fixed to match: {prompt}?",
    "What must change for this image to be a good match for: {prompt}?",
    "How should I edit the picture to follow the prompt: {prompt}?",
    "What edit makes this image true to the prompt: {prompt}?",
    "Tell me what to change so the image matches the intended prompt: {prompt}.",
    "How can the image be changed to show what the prompt describes: {prompt}?",
    "What is the right edit for this picture given the prompt: {prompt}?",
    "How would this image have to change to match: {prompt}?",
    "Suggest the change that makes the picture match the text: {prompt}.",
    "How should this image be corrected according to the prompt: {prompt}?",
    "What should I change so the image fits the intended description: {prompt}?",
    "How do you make this image match the prompt: {prompt}?",
    "Give the instruction that edits this picture into: {prompt}.",
    "What is needed to make the image match the prompt exactly: {prompt}?",
    "How can this picture be made to match the intended text: {prompt}?",
    "Which modification turns this image into a match for: {prompt}?",
    "How should the picture be edited to depict the prompt: {prompt}?",
    "What change would make this image a match for the caption: {prompt}?",
    "How can I fix the image so it agrees with the prompt: {prompt}?",
    "What edit instruction would make the picture show the prompt: {prompt}?",
    "How do I edit the image to reflect the intended prompt: {prompt}?",
    "Looking at the prompt: {prompt}, what should change in this picture?",
    "What should be edited so the image is consistent with: {prompt}?",
    "How would you change this image so it depicts: {prompt}?",
    "What change makes the picture agree with the intended prompt: {prompt}?",
    "How can this image be transformed to match the prompt: {prompt}?",
)

INFERENCE_TEMPLATE = 0
"""Index of the question used for guidance features at IMG inference (and for evaluation).

Fixed rather than sampled: the guidance features h feed the Implicit Aligner, which is trained on
features computed with one question and must see the same question when it is used; a random
question per call would add noise unrelated to the image or the prompt and make features (and
re-generations) irreproducible. Template 0 is the paper's own example wording (supp. A.3)."""


def _check_templates() -> None:
    # Import-time guard: a duplicated or malformed template would silently skew sampling.
    if len(QUESTION_TEMPLATES) != 100 or len(set(QUESTION_TEMPLATES)) != 100:
        raise RuntimeError("QUESTION_TEMPLATES must hold exactly 100 distinct templates")
    for template in QUESTION_TEMPLATES:
        if template.count("{prompt}") != 1 or template.count("{") != 1:
            raise RuntimeError(f"template must hold exactly one {{prompt}}: {template!r}")


_check_templates()


def question(prompt: str, index: int) -> str:
    """The question of template ``index`` about ``prompt``.

    Args:
        prompt: the intended prompt (the edited prompt T1 during finetuning).
        index: template index in ``[0, 100)``.

    Raises:
        TypeError: ``prompt`` is not a string.
        IndexError: ``index`` is outside ``[0, 100)``.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    index = int(index)
    if not 0 <= index < len(QUESTION_TEMPLATES):
        raise IndexError(
            f"question template index {index} is out of range; use 0 to "
            f"{len(QUESTION_TEMPLATES) - 1}"
        )
    return QUESTION_TEMPLATES[index].format(prompt=prompt.strip())


def sample_question(prompt: str, generator: torch.Generator | None = None) -> str:
    """A question about ``prompt`` with a template drawn uniformly from the 100 (supp. A.3).

    Args:
        prompt: the intended prompt.
        generator: a CPU ``torch.Generator`` for reproducible draws; ``None`` uses torch's
            global generator.
    """
    index = int(torch.randint(len(QUESTION_TEMPLATES), (1,), generator=generator))
    return question(prompt, index)
