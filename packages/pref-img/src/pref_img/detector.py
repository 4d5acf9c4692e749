"""IMG's misalignment detector: a multimodal LLM finetuned to say how an image misses its prompt.

Two uses (IMG main paper §3.2 and supp. A.3):

- **Finetuning** (:meth:`~MisalignmentDetector.loss`): on triplets (original image I0, edited
  prompt T1, edit instruction TE) the MLLM reads I0 and a question built from T1 and is trained
  with the causal-LM loss on the answer TE only.
- **Guidance features** (:meth:`~MisalignmentDetector.guidance_features`): at IMG inference the
  detector is not decoded; the last hidden layer over all tokens (image tokens and question) is
  the guidance feature h that the Implicit Aligner attends to.

Two model families behind one protocol: LLaVA-1.5 (:class:`LlavaDetector`, the paper's
LLaVA-1.5-13B) and Qwen2.5-VL (:class:`QwenVLDetector`, the paper's Table 4 alternative).
:func:`load_detector` reads either from a hub id or a local folder through transformers' own
``from_pretrained`` and sets it up frozen, fully trainable (LLaVA's finetuning convention) or
with LoRA adapters.

Conversations are written in each model's own chat format, with the prompt part tokenised by the
model's processor (which expands the image placeholder into the image tokens) and the answer
tokenised on its own, so the label mask is exact whatever the tokenizer merges at the boundary:

- LLaVA-1.5: ``USER: <image>\\n{question} ASSISTANT:`` + `` {answer}</s>``;
- Qwen2.5-VL: its template with the default system turn, ``<|im_start|>system\\nYou are a helpful
  assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}
  <|im_end|>\\n<|im_start|>assistant\\n`` + ``{answer}<|im_end|>``.

Images may be tensors ``(B, 3, H, W)`` in [-1, 1] (what the diffusion models produce) or PIL
images; tensors are rounded to 8 bits first, which is what the processors' resizing does anyway
(transformers' PIL image backends resize through PIL), so a tensor and the PNG it would be saved
as give the same features.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pref_core.protocols import ObjectiveOutput
from pref_img.questions import INFERENCE_TEMPLATE, question, sample_question

__all__ = [
    "DETECTOR_KINDS",
    "DETECTOR_MODES",
    "IGNORE_INDEX",
    "LlavaDetector",
    "MisalignmentDetector",
    "QwenVLDetector",
    "load_detector",
]

DETECTOR_KINDS = ("llava", "qwen2_5_vl")
DETECTOR_MODES = ("frozen", "full", "lora")
IGNORE_INDEX = -100
"""Label of every position that is not an answer token (the value cross-entropy ignores)."""
DETECTOR_FILE = "detector.json"
"""Written next to a LoRA adapter: names the base model the adapter belongs to."""

# Attention and MLP projections of the Llama / Qwen2 decoder layers. The vision towers have
# layers of the same names (Qwen's vision MLP, CLIP's q/k/v), so the pattern is anchored on the
# language model.
_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_QWEN_SYSTEM = "You are a helpful assistant."

Images = Tensor | Sequence[Image.Image] | Sequence[Tensor]


# ---------------------------------------------------------------------------------- protocol
@runtime_checkable
class MisalignmentDetector(Protocol):
    """What IMG needs from its MLLM: a finetuning loss, guidance features, and (for evaluation)
    greedy answers. Implemented by :class:`LlavaDetector` and :class:`QwenVLDetector`.

    Attributes:
        kind: ``"llava"`` or ``"qwen2_5_vl"``.
        model: the ``...ForConditionalGeneration`` module (LoRA layers injected when loaded
            with ``mode="lora"``).
        processor: the model's processor (image processor + tokenizer).
        hidden_size: width D of the guidance features.
    """

    kind: str
    model: nn.Module
    processor: Any
    hidden_size: int

    def loss(
        self,
        images: Images,
        prompts: Sequence[str],
        answers: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput: ...

    def guidance_features(
        self, images: Images, prompts: Sequence[str], *, template: int = INFERENCE_TEMPLATE
    ) -> tuple[Tensor, Tensor]: ...

    def generate(
        self,
        images: Images,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        template: int = INFERENCE_TEMPLATE,
    ) -> list[str]: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path: ...


# ---------------------------------------------------------------------------------- images
def _to_arrays(images: Images) -> list[np.ndarray]:
    """Images → uint8 ``(H, W, 3)`` arrays, the processors' native input.

    Tensors in [-1, 1] (one ``(B, 3, H, W)`` batch or a list of ``(3, H, W)``) are mapped to
    [0, 255] and rounded; PIL images are converted to RGB.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"image tensors must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}"
            )
        images = list(images)
    out = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            out.append(np.asarray(image.convert("RGB")))
        elif isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {i} must be (3, H, W) in [-1, 1], got {tuple(image.shape)}"
                )
            pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
            out.append(pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy())
        else:
            raise TypeError(
                f"image {i} is a {type(image).__name__}; pass a (B, 3, H, W) tensor in [-1, 1] "
                "or a list of PIL images"
            )
    return out


def _as_strings(name: str, values: Sequence[str], n: int) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings (one per image), not one string")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"got {n} images but {len(values)} {name}; pass one per image")
    bad = [type(v).__name__ for v in values if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must be strings, got {bad[0]}")
    return values


# ---------------------------------------------------------------------------------- detector
class _ChatDetector(abc.ABC):
    """The work shared by both families; each subclass supplies its chat format
    (:meth:`_prompt_text`), its end-of-answer token, how the image placeholders are expanded
    (:meth:`_encode_prompts`) and the model inputs besides ``input_ids`` (:meth:`_extra`)."""

    kind: str = ""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        mode: str = "frozen",
        source: str | None = None,
        revision: str | None = None,
        peft_model: nn.Module | None = None,
        lora: dict[str, Any] | None = None,
    ) -> None:
        if mode not in DETECTOR_MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(DETECTOR_MODES)}")
        self.model = model
        self.processor = processor
        self.mode = mode
        self.source = source
        self.revision = revision
        self.peft_model = peft_model
        self.lora = dict(lora or {})
        self.tokenizer = processor.tokenizer
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"the {self.kind} tokenizer has no pad token; set tokenizer.pad_token (llava-hf "
                "uses '<pad>', Qwen '<|endoftext|>')"
            )

    # ------------------------------------------------------------------ family hooks
    @abc.abstractmethod
    def _prompt_text(self, question_text: str) -> str:
        """The conversation up to the assistant's answer, with the image placeholder."""

    @property
    @abc.abstractmethod
    def end_token_id(self) -> int:
        """Id of the token that ends an answer (labelled, and where generation stops)."""

    @abc.abstractmethod
    def _encode_prompts(self, arrays: list[np.ndarray], texts: list[str]):
        """(list of prompt id lists, dict of image tensors for the model)."""

    def _extra(self, input_ids: Tensor) -> dict[str, Tensor]:
        return {}

    # ------------------------------------------------------------------ encoding
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(
        self,
        images: Images,
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        padding_side: str = "right",
    ) -> dict[str, Tensor]:
        """Tokenise conversations into model inputs (on the model's device).

        Args:
            images: B images (a ``(B, 3, H, W)`` tensor in [-1, 1] or PIL images).
            questions: B questions (already formatted with their prompts).
            answers: B answers; when given, each is appended after the assistant turn with the
                end-of-answer token, and ``labels`` are returned.
            padding_side: ``"right"`` for forward passes (real tokens keep positions 0..n-1),
                ``"left"`` for generation.

        Returns:
            ``input_ids`` (B, L), ``attention_mask`` (B, L) int64, ``labels`` (B, L) when
            answering (the answer ids and the end token, :data:`IGNORE_INDEX` elsewhere),
            ``pixel_values`` and the family's image inputs.
        """
        arrays = _to_arrays(images)
        questions = _as_strings("questions", questions, len(arrays))
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        prompt_ids, image_inputs = self._encode_prompts(
            arrays, [self._prompt_text(q) for q in questions]
        )
        sequences, labels = [], []
        if answers is None:
            sequences = prompt_ids
        else:
            answers = _as_strings("answers", answers, len(arrays))
            encoded = self.tokenizer(
                [a.strip() for a in answers], add_special_tokens=False
            ).input_ids
            for ids, answer in zip(prompt_ids, encoded):
                target = [*answer, self.end_token_id]
                sequences.append([*ids, *target])
                labels.append([IGNORE_INDEX] * len(ids) + target)
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        label_tensor = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for i, seq in enumerate(sequences):
            span = slice(0, len(seq)) if padding_side == "right" else slice(length - len(seq), None)
            input_ids[i, span] = torch.tensor(seq)
            mask[i, span] = 1
            if labels:
                label_tensor[i, span] = torch.tensor(labels[i])
        batch = {"input_ids": input_ids, "attention_mask": mask, **image_inputs}
        batch.update(self._extra(input_ids))
        if labels:
            batch["labels"] = label_tensor
        device, dtype = self.device, self.dtype
        return {
            k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
            for k, v in batch.items()
        }

    def _inner(self) -> nn.Module:
        # The ...Model inside ...ForConditionalGeneration: the last hidden layer without the
        # LM head (LoRA layers, when present, are injected in place so they are used here too).
        return self.model.model

    def _hidden(self, batch: dict[str, Tensor]) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self._inner()(**inputs, use_cache=False).last_hidden_state

    # ------------------------------------------------------------------ public API
    def loss(
        self,
        images: Images,
        prompts: Sequence[str],
        answers: Sequence[str],
        *,
        questions: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        """Causal-LM loss of the answers (supp. A.3): mean cross-entropy over every answer token
        of the batch (and each answer's end token), the question and image tokens unlabelled.

        Args:
            images: B original images I0, ``(B, 3, H, W)`` in [-1, 1] or PIL images.
            prompts: B intended (edited) prompts T1.
            answers: B edit instructions TE.
            questions: explicit questions; by default one template per example is drawn with
                :func:`~pref_img.questions.sample_question` from ``generator``.
            generator: CPU generator for the template draws.

        Returns:
            ``loss`` (scalar) and metrics ``loss``, ``answer_tokens`` (mean labelled tokens per
            example) and ``token_accuracy`` (greedy next-token accuracy on labelled tokens).
        """
        prompts = _as_strings("prompts", prompts, len(_as_list(images)))
        if questions is None:
            questions = [sample_question(p, generator) for p in prompts]
        batch = self.encode(images, questions, answers)
        hidden = self._hidden(batch)  # (B, L, D)
        # Position t predicts token t + 1: only positions whose next token is labelled need
        # logits, which spares a (B, L, V) tensor over hundreds of image tokens.
        target = batch["labels"][:, 1:]  # (B, L - 1)
        selected = target != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][selected]).float()  # (N, V)
        labels = target[selected]  # (N,)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean()
            counts = selected.sum(1).float().mean()
        return ObjectiveOutput(
            loss=loss,
            metrics={"loss": loss.detach(), "answer_tokens": counts, "token_accuracy": accuracy},
        )

    def guidance_features(
        self,
        images: Images,
        prompts: Sequence[str],
        *,
        template: int = INFERENCE_TEMPLATE,
        grad: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """IMG's guidance features h: the last hidden layer over all tokens (main paper §3.2).

        One forward pass of the inner model (no LM head, no decoding) on the image and the
        question of ``template`` about each prompt. Batches are padded on the right, so with
        causal attention (and Qwen's M-RoPE positions computed from the mask) real tokens never
        see the padding: each sample's features equal its features alone.

        Args:
            images: B images, ``(B, 3, H, W)`` in [-1, 1] or PIL images.
            prompts: B prompts the images should match.
            template: question template index (default :data:`INFERENCE_TEMPLATE`).
            grad: build the autograd graph (default: run under ``torch.no_grad()``).

        Returns:
            ``(features, mask)``: float32 ``(B, L, hidden_size)`` and bool ``(B, L)``, True on
            real tokens (the padding rows hold unspecified values).
        """
        prompts = _as_strings("prompts", prompts, len(_as_list(images)))
        with torch.set_grad_enabled(grad):
            batch = self.encode(images, [question(p, template) for p in prompts])
            hidden = self._hidden(batch)
        return hidden.float(), batch["attention_mask"].bool()

    @torch.no_grad()
    def generate(
        self,
        images: Images,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        template: int = INFERENCE_TEMPLATE,
    ) -> list[str]:
        """Greedy answers (edit instructions) for evaluation, e.g. :func:`detector_agreement`.

        Returns:
            B decoded strings, special tokens removed and whitespace stripped.
        """
        prompts = _as_strings("prompts", prompts, len(_as_list(images)))
        batch = self.encode(images, [question(p, template) for p in prompts], padding_side="left")
        output = self.model.generate(
            **batch,
            max_new_tokens=int(max_new_tokens),
            do_sample=False,
            eos_token_id=self.end_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = output[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the mode leaves trainable (empty when frozen)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write the detector so :func:`load_detector` (and transformers) can read it back.

        Frozen or full: the whole model (``model.save_pretrained``) and its processor. LoRA: the
        peft adapter (LoRA weights and the trained projector), the processor, and
        ``detector.json`` naming the base model the adapter applies to.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.peft_model is not None:
            if self.source is None:
                raise ValueError(
                    "cannot save a LoRA detector without the base model's source; load it with "
                    "load_detector(...) so the source is recorded"
                )
            self.peft_model.save_pretrained(folder)
            info = {
                "kind": self.kind,
                "base": self.source,
                "revision": self.revision,
                "format": "peft-lora",
                **self.lora,
            }
            (folder / DETECTOR_FILE).write_text(json.dumps(info, indent=2) + "\n", "utf-8")
        else:
            self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, mode={self.mode!r}, "
            f"hidden_size={self.hidden_size})"
        )


def _as_list(images: Images) -> list[Any]:
    if isinstance(images, Tensor):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


class LlavaDetector(_ChatDetector):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``) as a misalignment detector.

    Conversation: ``USER: <image>\\n{question} ASSISTANT:`` then `` {answer}</s>`` (llava-hf's
    format); the processor expands ``<image>`` into the vision tower's patch tokens (576 for the
    336-pixel CLIP ViT-L/14).
    """

    kind = "llava"

    def _prompt_text(self, question_text: str) -> str:
        return f"USER: {self.processor.image_token}\n{question_text} ASSISTANT:"

    @property
    def end_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def _encode_prompts(self, arrays, texts):
        encoded = self.processor(images=arrays, text=texts, padding=True, return_tensors="pt")
        ids = [
            row[mask.bool()].tolist()
            for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])
        ]
        return ids, {"pixel_values": encoded["pixel_values"]}


class QwenVLDetector(_ChatDetector):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) as a misalignment detector.

    Conversation: Qwen's chat template with its default system turn; the image is
    ``<|vision_start|><|image_pad|>…<|vision_end|>`` before the question, with one
    ``<|image_pad|>`` per merged 2×2 patch group (grid t·h·w / merge²), as
    ``Qwen2_5_VLProcessor.replace_image_token`` counts them. That expansion is done here from the
    image processor's ``image_grid_thw`` so the detector also works where transformers cannot build
    the full processor (its video processor needs torchvision).
    """

    kind = "qwen2_5_vl"
    _image_token = "<|image_pad|>"

    def _prompt_text(self, question_text: str) -> str:
        return (
            f"<|im_start|>system\n{_QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{self._image_token}<|vision_end|>{question_text}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    @property
    def end_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def _encode_prompts(self, arrays, texts):
        image_processor = self.processor.image_processor
        pixels = image_processor(images=arrays, return_tensors="pt")
        merge = int(image_processor.merge_size) ** 2
        expanded = []
        for text, grid in zip(texts, pixels["image_grid_thw"]):
            count = int(grid.prod()) // merge
            expanded.append(text.replace(self._image_token, self._image_token * count, 1))
        ids = self.tokenizer(expanded, add_special_tokens=False).input_ids
        return ids, {
            "pixel_values": pixels["pixel_values"],
            "image_grid_thw": pixels["image_grid_thw"],
        }

    def _extra(self, input_ids: Tensor) -> dict[str, Tensor]:
        # M-RoPE needs to know which tokens are image tokens (1) and which are text (0).
        return {"mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32)}


_DETECTOR_CLASSES: dict[str, type[_ChatDetector]] = {
    "llava": LlavaDetector,
    "qwen2_5_vl": QwenVLDetector,
}


# ---------------------------------------------------------------------------------- loading
class _ImageTextProcessor:
    """An image processor and a tokenizer standing in for a processor class transformers cannot
    build here (``Qwen2_5_VLProcessor`` without torchvision); saves both in the hub layout."""

    def __init__(self, image_processor: Any, tokenizer: Any, processor_class: str) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.processor_class = processor_class

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        for name in ("preprocessor_config.json", "tokenizer_config.json"):
            file = folder / name
            if file.is_file():
                data = json.loads(file.read_text(encoding="utf-8"))
                data["processor_class"] = self.processor_class
                file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a local path.
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1


def _hub_error(source: str, error: Exception) -> OSError:
    return OSError(
        f"cannot load the detector {source!r}: {error}. If this machine is offline, download it "
        f"first (e.g. `huggingface-cli download {source}`) or pass the path of a local copy."
    )


def _load_processor(kind: str, source: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except ImportError:
        if kind != "qwen2_5_vl":
            raise
    # Qwen2_5_VLProcessor insists on a video processor, which needs torchvision.
    return _ImageTextProcessor(
        AutoImageProcessor.from_pretrained(source, **kwargs),
        AutoTokenizer.from_pretrained(source, **kwargs),
        "Qwen2_5_VLProcessor",
    )


def _model_class(kind: str) -> Any:
    import transformers

    name = {
        "llava": "LlavaForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    }[kind]
    return getattr(transformers, name)


def _projector_name(kind: str) -> str:
    # LLaVA's MLP projector; Qwen2.5-VL's patch merger plays the same role (vision → LM width).
    return "multi_modal_projector" if kind == "llava" else "merger"


def _vision_tower(model: nn.Module, kind: str) -> nn.Module:
    return model.model.vision_tower if kind == "llava" else model.model.visual


def _set_full(model: nn.Module, kind: str) -> None:
    """LLaVA's finetuning convention: the vision encoder frozen; projector and LM trained."""
    model.requires_grad_(True)
    _vision_tower(model, kind).requires_grad_(False)
    if kind == "qwen2_5_vl":
        model.model.visual.merger.requires_grad_(True)


def load_detector(
    source: str | os.PathLike[str],
    *,
    kind: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    mode: str = "frozen",
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    gradient_checkpointing: bool = False,
    revision: str | None = None,
    local_files_only: bool = False,
) -> MisalignmentDetector:
    """Load a LLaVA-1.5 or Qwen2.5-VL detector from a hub id or a local folder.

    Reads with transformers' own ``from_pretrained`` (``LlavaForConditionalGeneration`` or
    ``Qwen2_5_VLForConditionalGeneration``, and ``AutoProcessor``). A folder written by a LoRA
    detector's :meth:`save_pretrained` (it holds ``detector.json``) loads its base model first,
    then the adapter.

    Modes:

    - ``"frozen"``: no parameter trains; the model is put in eval mode (IMG inference).
    - ``"full"``: LLaVA's finetuning convention: vision encoder frozen, projector (Qwen: the patch
      merger) and language model trained.
    - ``"lora"``: peft LoRA (rank ``lora_rank``, alpha ``lora_alpha``, default 2·rank as in
      LLaVA-1.5's LoRA recipe) on the language model's attention and MLP projections; the
      projector trains fully too (as in LLaVA-1.5's LoRA recipe) and is saved with the adapter.
      A saved adapter loaded with ``"full"`` is merged into the weights first.

    Args:
        source: hub id (``"llava-hf/llava-1.5-13b-hf"``, ``"Qwen/Qwen2.5-VL-7B-Instruct"``) or
            local folder.
        kind: ``"llava"`` or ``"qwen2_5_vl"``; by default read from ``config.model_type``.
        dtype: weights dtype.
        device: where to put the model.
        mode: ``"frozen"``, ``"full"`` or ``"lora"``.
        lora_rank: LoRA rank (``mode="lora"`` only).
        lora_alpha: LoRA alpha; ``None`` means ``2 * lora_rank``.
        gradient_checkpointing: recompute activations in the backward pass (saves memory).
        revision: hub revision (branch, tag or commit).
        local_files_only: never touch the network.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        OSError: a hub id that cannot be fetched (offline, unknown): download it first or pass a
            local path.
        ValueError: an unsupported ``model_type``, a ``kind`` that contradicts the config, or a
            bad ``mode``.
    """
    from transformers import AutoConfig

    if mode not in DETECTOR_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(DETECTOR_MODES)}")
    if kind is not None and kind not in DETECTOR_KINDS:
        raise ValueError(
            f"unknown detector kind {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}"
        )
    source = os.fspath(source)
    if source.startswith("~"):
        source = os.path.expanduser(source)
    local = Path(source)
    if local.exists() and not local.is_dir():
        raise FileNotFoundError(
            f"{source!r} is a file; pass a model folder (config.json, weights, processor files) or "
            "a hub id"
        )
    if not local.exists() and _looks_like_path(source):
        raise FileNotFoundError(
            f"detector folder {source!r} does not exist; pass a folder written by "
            "save_pretrained (or a downloaded hub snapshot) or a hub id"
        )
    hub = {"revision": revision, "local_files_only": local_files_only}
    adapter_info = None
    if local.is_dir() and (local / DETECTOR_FILE).is_file():
        adapter_info = json.loads((local / DETECTOR_FILE).read_text(encoding="utf-8"))
        base = str(adapter_info["base"])
        base_hub = {"revision": adapter_info.get("revision"), "local_files_only": local_files_only}
    else:
        base, base_hub = source, hub
    try:
        config = AutoConfig.from_pretrained(base, **base_hub)
    except OSError as error:
        if Path(base).is_dir():
            raise OSError(
                f"{base!r} is not a model folder: {error}. Expected config.json, the weights and "
                "the processor files, as save_pretrained writes them."
            ) from error
        raise _hub_error(base, error) from error
    model_type = getattr(config, "model_type", None)
    if model_type not in DETECTOR_KINDS:
        raise ValueError(
            f"{base!r} has model_type {model_type!r}; supported detector models: "
            f"{', '.join(DETECTOR_KINDS)} (LLaVA-1.5 and Qwen2.5-VL)"
        )
    if kind is not None and kind != model_type:
        raise ValueError(f"kind={kind!r} but {base!r} is a {model_type!r} model")
    kind = model_type
    dtype_key = _dtype_keyword()
    try:
        model = _model_class(kind).from_pretrained(base, **{dtype_key: dtype}, **base_hub)
    except OSError as error:
        raise _hub_error(base, error) from error
    processor_source = source if adapter_info is not None else base
    processor_hub = hub if adapter_info is not None else base_hub
    processor = _load_processor(kind, processor_source, processor_hub)
    model.to(device)

    peft_model, lora = None, None
    if adapter_info is not None:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, source, is_trainable=(mode == "lora"))
        lora = {k: adapter_info[k] for k in ("lora_rank", "lora_alpha") if k in adapter_info}
        if mode == "lora":
            model = peft_model.get_base_model()
        else:
            model = peft_model.merge_and_unload()
            peft_model = None
    if mode == "frozen":
        model.requires_grad_(False)
        model.eval()
    elif mode == "full":
        _set_full(model, kind)
        model.train()
    elif peft_model is None:  # a fresh LoRA
        from peft import LoraConfig, get_peft_model

        alpha = float(2 * lora_rank if lora_alpha is None else lora_alpha)
        lora_config = LoraConfig(
            r=int(lora_rank),
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=_LORA_TARGETS,
            modules_to_save=[_projector_name(kind)],
        )
        peft_model = get_peft_model(model, lora_config)
        model = peft_model.get_base_model()
        lora = {"lora_rank": int(lora_rank), "lora_alpha": alpha}
        model.train()
    else:
        model.train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base_source = str(Path(base).resolve()) if Path(base).is_dir() else base
    return _DETECTOR_CLASSES[kind](
        model,
        processor,
        mode=mode,
        source=base_source,
        revision=base_hub.get("revision"),
        peft_model=peft_model,
        lora=lora,
    )


def _dtype_keyword() -> str:
    """transformers ≥ 4.56 names the weights dtype ``dtype`` (``torch_dtype`` is deprecated)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
