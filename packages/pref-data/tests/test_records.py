"""decode_image and PreferenceSource: every image kind decodes; bad data raises CorruptImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from pref_data.errors import CorruptImageError, EmptyDatasetError, SchemaError
from pref_data.records import PreferenceRecord, PreferenceSource, decode_image


def encoded(color=(255, 0, 0), size=(8, 6), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def test_decodes_every_source_kind_to_rgb(tmp_path):
    png = encoded((10, 200, 30))
    path = tmp_path / "a.png"
    path.write_bytes(png)
    rgba = Image.new("RGBA", (8, 6), (10, 200, 30, 128))
    array = np.full((6, 8, 3), (10, 200, 30), dtype=np.uint8)
    sources = [png, bytearray(png), str(path), path, rgba, array, {"bytes": png, "path": None}]
    sources.append({"bytes": None, "path": str(path)})
    for src in sources:
        image = decode_image(src)
        assert image.mode == "RGB" and image.size == (8, 6)
        assert image.getpixel((3, 3)) == (10, 200, 30)


def test_grey_array_becomes_rgb():
    image = decode_image(np.full((4, 5), 77, dtype=np.uint8))
    assert image.size == (5, 4) and image.getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize(
    "bad",
    [b"not an image", b"", truncated_jpeg(), {"bytes": None, "path": None}],
    ids=["garbage", "empty", "truncated-jpeg", "empty-dict"],
)
def test_bad_bytes_raise_corrupt_image_error(bad):
    with pytest.raises(CorruptImageError):
        decode_image(bad)


def test_the_untruncated_jpeg_decodes():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    assert decode_image(buffer.getvalue()).size == (64, 64)


def test_missing_file_and_bad_array_are_corrupt(tmp_path):
    with pytest.raises(CorruptImageError, match="not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(CorruptImageError, match="uint8"):
        decode_image(np.zeros((4, 4, 3), dtype=np.float32))
    assert issubclass(CorruptImageError, ValueError)


def test_unsupported_type_is_a_type_error():
    with pytest.raises(TypeError, match="image source"):
        decode_image(12)


def test_schema_error_lists_found_expected_and_missing():
    err = SchemaError("data.parquet", ["caption", "jpg_0"], ["caption", "jpg_0", "jpg_1"])
    text = str(err)
    assert "data.parquet" in text and "['jpg_1']" in text
    assert "found ['caption', 'jpg_0']" in text and "expected ['caption', 'jpg_0', 'jpg_1']" in text
    assert err.missing == ["jpg_1"] and isinstance(err, ValueError)


def test_source_from_records_indexes_iterates_and_rejects_empty():
    records = [PreferenceRecord(f"p{i}", b"w", b"l", f"r{i}") for i in range(3)]
    source = PreferenceSource.from_records(records, name="mem")
    assert len(source) == 3 and not source.streaming
    assert source[-1].id == "r2" and [r.id for r in source] == ["r0", "r1", "r2"]
    with pytest.raises(IndexError):
        source[3]
    with pytest.raises(EmptyDatasetError):
        PreferenceSource.from_records([], name="mem")


def test_streaming_source_has_no_length_or_indexing():
    source = PreferenceSource("s", iterate=lambda: iter([]), streaming=True)
    with pytest.raises(TypeError, match="streaming"):
        len(source)
    with pytest.raises(TypeError, match="streaming"):
        source[0]
