"""Readers on tiny real files: Pick-a-Pic parquet/hub layout/webdataset, OIP, HPDv2, manifests,
folders and the spec dispatcher.

Every image is a flat colour: winners are red, losers blue, so decoding a record's winner says
whether the reader picked the right image.
"""

import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from pref_data.errors import CorruptImageError, EmptyDatasetError, SchemaError
from pref_data.readers import (
    folder,
    hpdv2,
    manifest,
    open_image_preferences,
    open_source,
    pickapic,
    pickapic_webdataset,
)
from pref_data.records import decode_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def jpeg(color, size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()[:400]


def colour(src) -> str:
    r, _, b = decode_image(src).getpixel((2, 2))
    return "red" if r > 200 and b < 60 else "blue" if b > 200 and r < 60 else "other"


def pickapic_rows():
    """Six rows: 0 (winner 0), 1 (winner 1), 2 tie, 3 model C, 4 corrupt winner, 5 truncated
    winner. The winner image is red except where it is broken on purpose."""

    def row(caption, winner, models=("A", "B"), w_bytes=None, tie=False):
        w = jpeg(RED) if w_bytes is None else w_bytes
        l = jpeg(BLUE)
        images = (w, l) if winner == 0 else (l, w)
        labels = (0.5, 0.5) if tie else ((1.0, 0.0) if winner == 0 else (0.0, 1.0))
        return {
            "caption": caption,
            "jpg_0": images[0],
            "jpg_1": images[1],
            "label_0": labels[0],
            "label_1": labels[1],
            "model_0": models[0],
            "model_1": models[1],
            "ranking_id": 100 + len(caption),
            "user_id": 7,
        }

    return [
        row("a red cat", 0),
        row("a dog", 1, models=("A", "A")),
        row("a tie", 0, tie=True),
        row("from C", 0, models=("C", "A")),
        row("corrupt", 0, w_bytes=b"\xff\xd8 not really a jpeg"),
        row("truncated", 1, w_bytes=truncated_jpeg()),
    ]


@pytest.fixture
def pq():
    return pytest.importorskip("pyarrow.parquet")


def write_parquet(pq, path, rows, row_group_size=None):
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [r[k] for r in rows] for k in rows[0]} if rows else {"caption": []}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------------------- Pick-a-Pic parquet
def test_pickapic_parquet_winners_ties_and_metadata(pq, tmp_path):
    path = write_parquet(pq, tmp_path / "p.parquet", pickapic_rows(), row_group_size=2)
    source = pickapic(path)
    assert not source.streaming and len(source) == 5
    assert [r.id for r in source] == [f"pickapic:train:{i}" for i in (0, 1, 3, 4, 5)]
    assert [source[i].id for i in range(5)] == [r.id for r in source]  # random access agrees
    assert source.stats["ties"] == 1 and source.stats["rows"] == 6
    for i in range(3):
        assert colour(source[i].winner) == "red" and colour(source[i].loser) == "blue"
    first = source[0]
    assert first.prompt == "a red cat" and first.metadata["model_0"] == "A"
    assert first.metadata["ranking_id"] == 109 and "jpg_0" not in first.metadata
    for broken in (source[3], source[4]):  # still listed; decoding fails later, per item
        with pytest.raises(CorruptImageError):
            decode_image(broken.winner)


def test_pickapic_model_filter_needs_both_models_in_the_set(pq, tmp_path):
    path = write_parquet(pq, tmp_path / "p.parquet", pickapic_rows())
    ids = [r.id for r in pickapic(path, models={"A", "B"})]
    assert ids == ["pickapic:train:0", "pickapic:train:1", "pickapic:train:4", "pickapic:train:5"]
    assert [r.id for r in pickapic(path, models=["A"])] == ["pickapic:train:1"]
    with pytest.raises(EmptyDatasetError, match=r"models in the data: \['A', 'B', 'C'\]"):
        pickapic(path, models={"Z"})


def test_pickapic_keep_ties(pq, tmp_path):
    path = write_parquet(pq, tmp_path / "p.parquet", pickapic_rows())
    source = pickapic(path, keep_ties=True)
    assert len(source) == 6 and source[2].metadata["tie"] is True


def test_pickapic_all_ties_and_empty_are_explicit(pq, tmp_path):
    ties = [r for r in pickapic_rows() if r["caption"] == "a tie"] * 3
    path = write_parquet(pq, tmp_path / "ties.parquet", ties)
    with pytest.raises(EmptyDatasetError, match="all 3 rows were ties"):
        pickapic(path)
    with pytest.raises(EmptyDatasetError, match="all 3 rows were ties"):
        list(pickapic(path, streaming=True))
    empty = write_parquet(pq, tmp_path / "empty.parquet", [r for r in pickapic_rows()][:0] or [])
    with pytest.raises((EmptyDatasetError, SchemaError)):
        pickapic(empty)
    import pyarrow as pa

    schema_only = {k: pa.array([], type=pa.float64()) for k in ("label_0", "label_1")}
    schema_only |= {k: pa.array([], type=pa.binary()) for k in ("caption", "jpg_0", "jpg_1")}
    pq.write_table(pa.table(schema_only), tmp_path / "zero.parquet")
    with pytest.raises(EmptyDatasetError, match="no rows"):
        pickapic(tmp_path / "zero.parquet")


def test_pickapic_schema_error_names_the_columns(pq, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "jpg_1"} for r in pickapic_rows()]
    path = write_parquet(pq, tmp_path / "p.parquet", rows)
    with pytest.raises(SchemaError) as info:
        pickapic(path)
    assert info.value.missing == ["jpg_1"]
    assert "found ['caption', 'jpg_0', 'label_0'" in str(info.value)
    assert "expected ['caption', 'jpg_0', 'jpg_1', 'label_0', 'label_1']" in str(info.value)


def test_pickapic_hub_folder_layout_and_splits(pq, tmp_path):
    rows = pickapic_rows()
    write_parquet(pq, tmp_path / "data/train-00000-of-00002.parquet", rows[:3])
    write_parquet(pq, tmp_path / "data/train-00001-of-00002.parquet", rows[3:])
    write_parquet(pq, tmp_path / "data/validation_unique-00000-of-00001.parquet", rows[:2])
    train = pickapic(tmp_path)
    assert [r.id for r in train] == [f"pickapic:train:{i}" for i in (0, 1, 3, 4, 5)]
    val = pickapic(tmp_path, split="validation_unique")
    assert [r.id for r in val] == ["pickapic:validation_unique:0", "pickapic:validation_unique:1"]
    with pytest.raises(FileNotFoundError, match="validation_unique"):
        pickapic(tmp_path, split="test")


def test_pickapic_folder_of_plain_shards(pq, tmp_path):
    rows = pickapic_rows()
    write_parquet(pq, tmp_path / "a.parquet", rows[:2])
    write_parquet(pq, tmp_path / "b.parquet", rows[2:])
    assert len(pickapic(tmp_path)) == 5


def test_pickapic_streaming_matches_materialised(pq, tmp_path):
    path = write_parquet(pq, tmp_path / "p.parquet", pickapic_rows(), row_group_size=4)
    stream = pickapic(path, streaming=True)
    assert stream.streaming
    with pytest.raises(TypeError):
        len(stream)
    assert [r.id for r in stream] == [r.id for r in pickapic(path)]


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError):
        pickapic(str(tmp_path / "nope.parquet"))


# ---------------------------------------------------------------------------- through datasets
@pytest.fixture
def datasets():
    return pytest.importorskip("datasets")


def test_pickapic_from_a_datasets_object_and_its_stream(datasets):
    rows = pickapic_rows()
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    source = pickapic(ds)
    assert [r.id for r in source] == [f"pickapic:train:{i}" for i in (0, 1, 3, 4, 5)]
    assert colour(source[1].winner) == "red"
    stream = pickapic(ds.to_iterable_dataset(), models={"A", "B"})
    assert stream.streaming
    assert [r.id for r in stream] == [f"pickapic:train:{i}" for i in (0, 1, 4, 5)]


def test_pickapic_hub_id_goes_through_load_dataset(datasets, monkeypatch):
    rows = pickapic_rows()
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        if name == "yuvalkirstain/pickapic_v2":
            raise FileNotFoundError("Dataset not found")
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = pickapic("someone/pickapic-mirror", split="train", load_kwargs={"revision": "r1"})
    assert len(source) == 5 and source.name == "pickapic:someone/pickapic-mirror"
    assert calls == [
        ("someone/pickapic-mirror", {"split": "train", "streaming": False, "revision": "r1"})
    ]
    with pytest.raises(FileNotFoundError, match="no longer available"):
        pickapic("yuvalkirstain/pickapic_v2")


def test_oip_with_image_features(datasets):
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "chosen": datasets.Image(),
            "rejected": datasets.Image(),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "prompt": ["p0", "p1"],
            "chosen": [Image.new("RGB", (8, 8), RED)] * 2,
            "rejected": [Image.new("RGB", (8, 8), BLUE)] * 2,
        },
        features=features,
    )
    source = open_image_preferences(ds)
    record = source[1]
    assert record.id == "oip:train:1" and record.prompt == "p1"
    assert isinstance(record.winner, dict)  # kept encoded, decoded on demand
    assert colour(record.winner) == "red" and colour(record.loser) == "blue"


# ---------------------------------------------------------------------------- OIP parquet
def test_oip_parquet_with_bytes_dicts_and_raw_bytes(pq, tmp_path):
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "prompt": ["p0", "p1"],
            "chosen": pa.array([{"bytes": jpeg(RED), "path": None}] * 2, type=image),
            "rejected": pa.array([{"bytes": jpeg(BLUE), "path": None}] * 2, type=image),
            "quality": [0.5, 0.7],
        }
    )
    pq.write_table(table, tmp_path / "oip.parquet")
    source = open_source(f"oip:{tmp_path / 'oip.parquet'}")
    assert len(source) == 2 and source[0].metadata == {"quality": 0.5}
    assert colour(source[0].winner) == "red" and colour(source[0].loser) == "blue"
    raw = pa.table({"prompt": ["p"], "chosen": [jpeg(RED)], "rejected": [jpeg(BLUE)]})
    pq.write_table(raw, tmp_path / "raw.parquet")
    assert colour(open_image_preferences(tmp_path / "raw.parquet")[0].winner) == "red"
    pq.write_table(pa.table({"prompt": ["p"], "chosen": [b""]}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="missing columns \\['rejected'\\]"):
        open_image_preferences(tmp_path / "bad.parquet")


# ---------------------------------------------------------------------------- webdataset
def write_tar(path, samples, mode="w"):
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def wds_samples(rows):
    out = []
    for i, r in enumerate(rows):
        meta = {k: v for k, v in r.items() if not k.startswith("jpg")}
        out.append(
            (
                f"sample{i:03d}",
                {"json": json.dumps(meta).encode(), "0.jpg": r["jpg_0"], "1.jpg": r["jpg_1"]},
            )
        )
    return out


def test_webdataset_indexed_and_streaming(tmp_path):
    samples = wds_samples(pickapic_rows())
    write_tar(tmp_path / "shard-000.tar", samples[:4])
    write_tar(tmp_path / "shard-001.tar", samples[4:])
    source = pickapic_webdataset(str(tmp_path / "shard-*.tar"))
    expected = [f"wds:shard-000/sample{i:03d}" for i in (0, 1, 3)]
    expected += ["wds:shard-001/sample004", "wds:shard-001/sample005"]
    assert [r.id for r in source] == expected
    assert source.stats["ties"] == 1
    assert colour(source[1].winner) == "red" and colour(source[2].loser) == "blue"
    assert source[0].prompt == "a red cat"
    stream = pickapic_webdataset(tmp_path, streaming=True, models={"A", "B"})
    ids = [r.id for r in stream]
    assert ids == [expected[0], expected[1], expected[3], expected[4]]


def test_webdataset_compressed_shards_stream_only(tmp_path):
    write_tar(tmp_path / "s.tar.gz", wds_samples(pickapic_rows()[:2]), mode="w:gz")
    with pytest.raises(ValueError, match="streaming=True"):
        pickapic_webdataset(tmp_path / "s.tar.gz")
    records = list(pickapic_webdataset(tmp_path / "s.tar.gz", streaming=True))
    assert [colour(r.winner) for r in records] == ["red", "red"]


def test_webdataset_schema_error_on_missing_members(tmp_path):
    samples = wds_samples(pickapic_rows()[:1])
    del samples[0][1]["1.jpg"]
    write_tar(tmp_path / "s.tar", samples)
    with pytest.raises(SchemaError, match=r"1\.jpg"):
        pickapic_webdataset(tmp_path / "s.tar")


# ---------------------------------------------------------------------------- HPDv2
def test_hpdv2_every_ordered_pair_by_rank_and_by_human_preference(tmp_path):
    for split, names in (("test", "abcde"), ("train", "xy")):
        (tmp_path / split).mkdir()
        for n in names:
            Image.new("RGB", (8, 8), RED).save(tmp_path / split / f"{n}.png")
    test = [
        {"prompt": "p0", "image_path": ["a.png", "b.png", "c.png"], "rank": [2, 1, 3]},
        {"prompt": "p1", "image_path": ["d.png", "e.png"], "rank": [1, 1]},
    ]
    train = [{"prompt": "q0", "image_path": ["x.png", "y.png"], "human_preference": [0, 1]}]
    (tmp_path / "test.json").write_text(json.dumps(test))
    (tmp_path / "train.json").write_text(json.dumps(train))

    source = hpdv2(tmp_path, split="test")
    pairs = {(r.id, r.winner.rsplit("/", 1)[1], r.loser.rsplit("/", 1)[1]) for r in source}
    assert pairs == {
        ("hpdv2:test:0:1>0", "b.png", "a.png"),
        ("hpdv2:test:0:1>2", "b.png", "c.png"),
        ("hpdv2:test:0:0>2", "a.png", "c.png"),
    }
    assert {r.prompt for r in source} == {"p0"} and source.stats["equal"] == 1
    (only,) = list(open_source(f"hpdv2:{tmp_path}", split="train"))
    assert only.id == "hpdv2:train:0:1>0" and only.winner.endswith("train/y.png")
    assert colour(only.winner) == "red"

    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "p", "image_path": ["a.png"]}]))
    with pytest.raises(SchemaError, match=re.escape("rank | human_preference")):
        hpdv2(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- manifests, folders
def image_files(root, names, color):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8), color).save(root / f"{n}.png")


def test_jsonl_and_csv_manifests(tmp_path):
    image_files(tmp_path / "img", ["w0", "w1"], RED)
    image_files(tmp_path / "img", ["l0", "l1"], BLUE)
    lines = [
        {"prompt": "p0", "winner": "img/w0.png", "loser": "img/l0.png", "id": "a", "score": 3},
        {"prompt": "p1", "winner": str(tmp_path / "img/w1.png"), "loser": "img/l1.png"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = open_source(str(tmp_path / "m.jsonl"))
    assert [r.id for r in source] == ["a", "m:1"]
    assert source[0].metadata == {"score": 3}
    assert [colour(r.winner) for r in source] == ["red", "red"]
    assert [colour(r.loser) for r in source] == ["blue", "blue"]

    (tmp_path / "m.csv").write_text("prompt,winner,loser\np0,img/w0.png,img/l0.png\n")
    (record,) = list(manifest(tmp_path / "m.csv"))
    assert record.id == "m:0" and colour(record.winner) == "red"

    (tmp_path / "cols.csv").write_text("prompt,good,bad\np,a,b\n")
    with pytest.raises(SchemaError, match="missing columns \\['winner', 'loser'\\]"):
        manifest(tmp_path / "cols.csv")
    (tmp_path / "gone.csv").write_text("prompt,winner,loser\np,img/none.png,img/l0.png\n")
    with pytest.raises(FileNotFoundError, match=r"none\.png"):
        manifest(tmp_path / "gone.csv")
    (tmp_path / "dup.csv").write_text(
        "id,prompt,winner,loser\nx,p,img/w0.png,img/l0.png\nx,p,img/w1.png,img/l1.png\n"
    )
    with pytest.raises(ValueError, match="duplicate"):
        manifest(tmp_path / "dup.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises((EmptyDatasetError, SchemaError)):
        manifest(tmp_path / "empty.jsonl")


def test_folder_layout(tmp_path):
    image_files(tmp_path / "winner", ["x", "y"], RED)
    image_files(tmp_path / "loser", ["x", "y"], BLUE)
    prompts = [{"id": "x", "prompt": "px", "seed": 1}, {"id": "y", "prompt": "py"}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts))
    source = open_source(str(tmp_path))
    assert [(r.id, r.prompt) for r in source] == [("x", "px"), ("y", "py")]
    assert source[0].metadata == {"seed": 1}
    assert colour(source[1].winner) == "red" and colour(source[1].loser) == "blue"
    (tmp_path / "loser" / "y.png").unlink()
    with pytest.raises(FileNotFoundError, match="\\['y'\\]"):
        folder(tmp_path)


def test_open_source_rejects_unknown_specs(tmp_path):
    with pytest.raises(ValueError, match="accepted forms: pickapic:PATH_OR_HUB_ID"):
        open_source("nonsense:thing")
    with pytest.raises(ValueError, match="wds:GLOB"):
        open_source(str(tmp_path / "file.txt"))


def test_sources_survive_pickling_for_spawned_workers(pq, tmp_path):
    import pickle

    path = write_parquet(pq, tmp_path / "p.parquet", pickapic_rows(), row_group_size=2)
    write_tar(tmp_path / "s.tar", wds_samples(pickapic_rows()))
    for source in (pickapic(path), pickapic_webdataset(tmp_path / "s.tar")):
        source[1]  # warm the handles/caches that must not travel
        copy = pickle.loads(pickle.dumps(source))
        assert [r.id for r in copy] == [r.id for r in source]
        assert colour(copy[2].winner) == "red"
