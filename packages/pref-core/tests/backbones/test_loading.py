"""load_backbone: family detection, errors, and the offline hub path."""

import json

import pytest
import torch

from pref_core.backbones import Backbone
from pref_core.backbones.loading import kind_of, load_backbone, read_model_index


def test_kind_detection_from_model_index(tiny_sd15_dir, tiny_sdxl_dir, tiny_flux_dir):
    assert kind_of(read_model_index(str(tiny_sd15_dir))) == "sd15"
    assert kind_of(read_model_index(str(tiny_sdxl_dir))) == "sdxl"
    assert kind_of(read_model_index(str(tiny_flux_dir))) == "flux"
    assert kind_of({"_class_name": "StableDiffusionPipeline", "_pref_kind": "toy"}) == "toy"
    with pytest.raises(ValueError, match="supported pipelines"):
        kind_of({"_class_name": "KandinskyPipeline"})


def test_loaded_backbones_match_their_family(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    assert isinstance(backbone, Backbone)
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert backbone.pipeline_class == index["_class_name"]
    assert backbone.source == str(tiny_dir)
    expected_process = "flow" if backbone.kind == "flux" else "epsilon"
    assert backbone.process.prediction_type == expected_process


def test_dtype_option(tiny_sd15_dir):
    backbone = load_backbone(str(tiny_sd15_dir), dtype=torch.bfloat16)
    assert next(backbone.model.parameters()).dtype == torch.bfloat16


def test_a_folder_without_model_index_is_explained(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        load_backbone(str(tmp_path))


def test_offline_hub_id_fails_with_a_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OSError, match="local directory"):
        load_backbone("sdxl", local_files_only=True)


def test_kind_mismatch_is_refused(monkeypatch, tiny_sd15_dir):
    import pref_core.backbones.loading as loading

    monkeypatch.setitem(loading.DEFAULT_SOURCES, "sdxl", str(tiny_sd15_dir))
    with pytest.raises(ValueError, match="not sdxl"):
        load_backbone("sdxl")
