import os
from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.cache import ImageCache
from cxrlab.data.images import read_image
from conftest import write_png, xray


@pytest.fixture
def refs(tmp_path):
    return [str(write_png(tmp_path / "img" / f"{i}.png", xray(i, size=48))) for i in range(80)]


def test_miss_then_hit(tmp_path, refs):
    cache = ImageCache(tmp_path / "c", workers=2)
    first = cache.load(refs, 32)
    assert first.status == "miss" and first.images.shape == (80, 32, 32)
    assert np.array_equal(first.images[5], read_image(refs[5], 32)[0])
    second = cache.load(refs, 32)
    assert second.status == "hit" and np.array_equal(first.images, second.images)
    assert second.info["sha1"].iat[3] == first.info["sha1"].iat[3] != ""


def test_other_size_is_another_entry(tmp_path, refs):
    cache = ImageCache(tmp_path / "c", workers=1)
    cache.load(refs, 32)
    assert cache.load(refs, 16).status == "miss"


def test_stale_file_is_redecoded_alone(tmp_path, refs):
    cache = ImageCache(tmp_path / "c", workers=1)
    cache.load(refs, 32)
    write_png(Path(refs[7]), np.full((48, 48), 200, np.uint8))
    st = os.stat(refs[7])
    os.utime(refs[7], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    again = cache.load(refs, 32, progress=lambda done, total: calls.append(total))
    assert again.status == "stale" and calls == [1]
    assert (again.images[7] == 200).all()
    assert np.array_equal(again.images[6], read_image(refs[6], 32)[0])


@pytest.mark.parametrize("damage", ["truncate_npy", "garbage_json", "delete_npy"])
def test_damaged_entry_is_rebuilt(tmp_path, refs, damage):
    cache = ImageCache(tmp_path / "c", workers=1)
    good = np.array(cache.load(refs, 32).images)
    npy = next((tmp_path / "c").glob("*.npy"))
    if damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[:1000])
    elif damage == "garbage_json":
        npy.with_suffix(".json").write_text("{not json")
    else:
        npy.unlink()
    again = cache.load(refs, 32)
    assert again.status == "damaged" and np.array_equal(again.images, good)


def test_bad_images_are_recorded_not_raised(tmp_path, refs):
    open(refs[2], "wb").close()
    result = ImageCache(tmp_path / "c", workers=2).load(refs, 32)
    assert list(result.errors.index) == [2] and "empty" in result.errors.iat[0]
    assert ImageCache(tmp_path / "c").load(refs, 32).errors.index.tolist() == [2]


def test_no_temporary_files_left(tmp_path, refs):
    ImageCache(tmp_path / "c", workers=2).load(refs, 32)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".npy"]


def test_dataset_reads_cache_rows_without_mapping_them(tmp_path):
    import pickle

    from cxrlab.data.dataset import CachedRows, XrayDataset

    path = tmp_path / "rows.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(6, 16, 16))
    arr[:] = np.random.default_rng(0).integers(0, 256, (6, 16, 16))
    arr.flush()
    mm = np.load(path, mmap_mode="r")
    ds = XrayDataset(mm, np.arange(6, dtype=np.float32), np.arange(6))
    assert isinstance(ds.images, CachedRows)
    for i in range(6):
        img, y = ds[i]
        assert np.array_equal(img[0].numpy(), mm[i]) and float(y) == i
    assert np.array_equal(pickle.loads(pickle.dumps(ds.images))[5], mm[5])  # DataLoader workers
    with open(path, "r+b") as f:  # a cache cut short is named, not read as zeros
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(OSError, match="short read"):
        CachedRows(mm)[5]
