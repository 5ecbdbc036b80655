"""vit_core.data, .fetch, .sources and .batches on archives, folders and damaged inputs that the tests build themselves."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_core import DataError
from vit_core import batches as B
from vit_core import data as D
from vit_core import fetch as F
from vit_core.config import CIFAR10_CLASSES
from vit_core.sources import load_split

N_PER_BATCH = 20  # images per generated batch (the official ones hold 10,000)


def _batch_bytes(seed: int, n: int = N_PER_BATCH) -> tuple[bytes, np.ndarray, np.ndarray]:
    """An official-format batch: a pickled dict with bytes keys, (n, 3072) uint8 and a label list."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = (np.arange(n) % 10).tolist()
    d = {
        b"batch_label": b"generated batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(d, protocol=2), data, np.asarray(labels)


def _py2_batch_bytes(data: np.ndarray, labels: list[int]) -> bytes:
    """The exact opcode shape Python 2's cPickle (protocol 2) gave the official files:
    py2 `str` as SHORT_BINSTRING/BINSTRING, the array via numpy.core.multiarray._reconstruct."""

    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    n, m = data.shape
    arr = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
        b"(" + i(1) + i(n) + i(m) + b"\x86cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb\x89" + s(data.tobytes()) + b"tb"
    )
    labs = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + labs + b"u."


def _meta_bytes() -> bytes:
    return pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, protocol=2)


def _make_batches_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    truth = {}
    for i, name in enumerate((*F.CIFAR10_TRAIN_BATCHES, *F.CIFAR10_TEST_BATCHES)):
        raw, data, labels = _batch_bytes(i)
        (folder / name).write_bytes(raw)
        truth[name] = (data, labels)
    (folder / "batches.meta").write_bytes(_meta_bytes())
    return truth


def _make_archive(tmp: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    src = tmp / "src"
    truth = _make_batches_folder(src / F.CIFAR10_FOLDER)
    archive = tmp / F.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / F.CIFAR10_FOLDER, arcname=F.CIFAR10_FOLDER)
    return archive, truth


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    arc, truth = _make_archive(tmp_path)
    monkeypatch.setattr(F, "CIFAR10_MD5", _md5(arc))  # our generated archive stands in for the official one
    return arc, truth


def test_official_constants() -> None:
    assert F.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert F.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_extracted_folder_is_read_in_official_order(tmp_path: Path) -> None:
    truth = _make_batches_folder(tmp_path / F.CIFAR10_FOLDER)
    train = load_split(tmp_path, "train")  # a folder that contains cifar-10-batches-py/
    test = load_split(tmp_path / F.CIFAR10_FOLDER, "test")
    assert train.images.shape == (5 * N_PER_BATCH, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (N_PER_BATCH, 3, 32, 32)
    assert train.class_names == list(CIFAR10_CLASSES)
    # row-major 3072 bytes = R plane, G plane, B plane of 32x32
    data1, labels1 = truth["data_batch_1"]
    assert torch.equal(train.images[:N_PER_BATCH], torch.from_numpy(data1.reshape(-1, 3, 32, 32)))
    data5, labels5 = truth["data_batch_5"]
    assert torch.equal(train.images[-N_PER_BATCH:], torch.from_numpy(data5.reshape(-1, 3, 32, 32)))
    assert train.labels[:N_PER_BATCH].tolist() == labels1.tolist()
    assert test.labels.tolist() == truth["test_batch"][1].tolist()


def test_local_archive_is_extracted_once_into_cache(tmp_path: Path, archive: tuple[Path, dict]) -> None:
    arc, truth = archive
    cache = tmp_path / "cache"
    test = load_split(arc, "test", cache_dir=cache)
    assert torch.equal(test.images, torch.from_numpy(truth["test_batch"][0].reshape(-1, 3, 32, 32)))
    folder = cache / F.CIFAR10_FOLDER
    assert (folder / "data_batch_3").is_file()
    stamp = (folder / "data_batch_3").stat().st_mtime_ns
    load_split(arc, "train", cache_dir=cache)
    assert (folder / "data_batch_3").stat().st_mtime_ns == stamp  # not extracted again
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".extract")]
    # and with no source at all, the cache is used
    assert len(load_split(None, "train", cache_dir=cache)) == 5 * N_PER_BATCH


def test_local_archive_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    arc, _ = _make_archive(tmp_path)  # the real published MD5 is expected here
    with pytest.raises(DataError, match="MD5"):
        load_split(arc, "train", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / F.CIFAR10_FOLDER).exists()


def test_download_with_progress_md5_and_atomic_rename(tmp_path: Path, archive: tuple[Path, dict]) -> None:
    arc, _ = archive
    calls: list[tuple[int, int]] = []
    cache = tmp_path / "dl"
    path = F.download_cifar10(cache, progress=lambda done, total: calls.append((done, total)), url=arc.as_uri())
    assert path == cache / F.CIFAR10_ARCHIVE and path.read_bytes() == arc.read_bytes()
    size = arc.stat().st_size
    assert calls[0][0] == 0 and calls[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert not list(cache.glob("*.tmp"))
    train = load_split(None, "train", download=True, cache_dir=cache)
    assert len(train) == 5 * N_PER_BATCH


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "file.bin"
    src.write_bytes(b"not the archive")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="MD5"):
        F.download_file(src.as_uri(), dest, md5="0" * 32)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_no_network_is_a_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.gz"
    with pytest.raises(DataError, match="Could not reach"):
        F.download_file("http://127.0.0.1:9/cifar-10-python.tar.gz", dest, timeout=2)  # port 9: nothing listens
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_missing_data_without_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=True"):
        load_split(None, "train", cache_dir=tmp_path)


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(F.CACHE_ENV, str(tmp_path / "mine"))
    assert F.default_cache_dir() == tmp_path / "mine"


def test_truncated_batch_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / F.CIFAR10_FOLDER
    _make_batches_folder(folder)
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_2 is truncated or damaged"):
        load_split(folder, "train")


def test_python2_pickled_batch_as_in_the_official_files() -> None:
    data = np.random.default_rng(3).integers(0, 256, size=(7, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9, 2]
    images, labs = F.read_cifar_batch(_py2_batch_bytes(data, labels), "py2")
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(7, -1), data) and labs.tolist() == labels


def test_batch_with_wrong_shape_or_labels_is_refused() -> None:
    bad = pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    with pytest.raises(DataError, match=r"\(n, 3072\)"):
        F.read_cifar_batch(bad, "b")
    bad = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    with pytest.raises(DataError, match="4 images but 2 labels"):
        F.read_cifar_batch(bad, "b")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.makedirs, ("SHOULD_NOT_EXIST",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    with pytest.raises(DataError, match="refusing to load global"):
        F.read_cifar_batch(payload, "evil")
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()
    obj_array = pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError):
        F.read_cifar_batch(obj_array, "objects")


def _tar_with(tmp: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    arc = tmp / "bad.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return arc


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
def test_extraction_refuses_path_escapes(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    arc = _tar_with(tmp_path, info)
    dest = tmp_path / "out" / "target"
    with pytest.raises(DataError, match="outside the target folder"):
        F.extract_tar_safely(arc, dest)
    assert (
        not dest.exists() and not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()
    )
    assert not list((tmp_path / "out").iterdir())  # the temporary folder was removed


def test_extraction_refuses_links(tmp_path: Path) -> None:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    arc = _tar_with(tmp_path, info)
    with pytest.raises(DataError, match="link"):
        F.extract_tar_safely(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    arc, _ = _make_archive(tmp_path)
    raw = arc.read_bytes()
    arc.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match="not a readable tar archive"):
        F.extract_tar_safely(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- image folders ---------------------------------------------------------------------


def _make_folder(root: Path, counts: dict[str, int], split: str = "train", size: int = 8, fmt: str = "png") -> None:
    rng = np.random.default_rng(0)
    for c, n in counts.items():
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.{fmt}")


def test_image_folder_reads_labels_pixels_and_caches(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_folder(root, {"cat": 3, "dog": 4})
    _make_folder(root, {"cat": 2, "dog": 2}, split="test")
    cache = tmp_path / "cache"
    train = load_split(root, "train", cache_dir=cache)
    assert train.class_names == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert train.images.shape == (7, 3, 8, 8)
    first = np.array(Image.open(root / "train" / "dog" / "0000.png")).transpose(2, 0, 1)
    assert torch.equal(train.images[3], torch.from_numpy(first))  # PNG is lossless
    cached = list((cache / "folders").glob("train-*.npz"))
    assert len(cached) == 1
    again = D.load_image_folder(root, "train", cache_dir=cache)
    assert torch.equal(again.images, train.images)
    # a changed folder is decoded again
    _make_folder(root, {"cat": 4}, split="train")
    assert len(D.load_image_folder(root, "train", cache_dir=cache)) == 8
    test = load_split(root, "test", cache_dir=cache)
    assert test.class_names == ["cat", "dog"] and test.class_counts() == [2, 2]


def test_image_folder_errors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not exist"):
        D.load_image_folder(tmp_path / "nothing", "train", cache_dir=cache)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        D.load_image_folder(tmp_path / "empty", "train", cache_dir=cache)
    (tmp_path / "hollow" / "train" / "cat").mkdir(parents=True)
    _make_folder(tmp_path / "hollow", {"dog": 2})
    with pytest.raises(DataError, match=r"no \.jpg/\.png images for class\(es\) \['cat'\]"):
        D.load_image_folder(tmp_path / "hollow", "train", cache_dir=cache)
    _make_folder(tmp_path / "skewed", {"cat": 1, "dog": 12})
    with pytest.raises(DataError, match="unbalanced"):
        D.load_image_folder(tmp_path / "skewed", "train", cache_dir=cache)
    _make_folder(tmp_path / "broken", {"cat": 2, "dog": 2})
    (tmp_path / "broken" / "train" / "dog" / "0001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="not a readable image"):
        D.load_image_folder(tmp_path / "broken", "train", cache_dir=cache)
    _make_folder(tmp_path / "mixed", {"cat": 2})
    _make_folder(tmp_path / "mixed", {"dog": 2}, size=12)
    with pytest.raises(DataError, match="image_size"):
        D.load_image_folder(tmp_path / "mixed", "train", cache_dir=cache)
    assert D.load_image_folder(tmp_path / "mixed", "train", image_size=8, cache_dir=cache).image_size == (8, 8)


# -- batch-wise augmentation -----------------------------------------------------------


def test_augment_identity_when_disabled() -> None:
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(B.augment_batch(x, padding=0, flip=False), x)


def test_flip_mirrors_some_images_and_keeps_others() -> None:
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = B.augment_batch(x, torch.Generator().manual_seed(0), padding=0, flip=True)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)  # no zeros inside images
    g = torch.Generator().manual_seed(1)
    y = B.augment_batch(x, g, padding=2, flip=False)
    assert y.shape == x.shape and y.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(32):
        hits = [(a, b) for a in range(5) for b in range(5) if torch.equal(padded[i, :, a : a + 8, b : b + 8], y[i])]
        assert hits, f"image {i} is not a crop of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets vary between images
    # reproducible with the same generator seed
    assert torch.equal(B.augment_batch(x, torch.Generator().manual_seed(1), padding=2, flip=False), y)


def _distinct_images(b: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """(b, 2, h, w) floats whose every pixel value is unique to its image."""
    return torch.arange(b * 2 * h * w, dtype=torch.float32).view(b, 2, h, w)


def test_mixup_is_the_lam_weighted_average_with_the_reversed_batch() -> None:
    x = torch.randn(6, 3, 8, 8)
    lams = []
    for seed in range(40):
        y, lam = B.mix_batch(x, torch.Generator().manual_seed(seed), mixup_alpha=0.8, cutmix_alpha=0.0)
        assert 0.0 < lam < 1.0
        partner = x[[5, 4, 3, 2, 1, 0]]
        assert torch.allclose(y, lam * x + (1 - lam) * partner, atol=1e-6)
        lams.append(lam)
    assert 0.3 < float(np.mean(lams)) < 0.7  # Beta(a, a) is symmetric about 1/2
    assert len(set(lams)) == 40
    # the same generator seed gives the same mix (exact resume)
    a, la = B.mix_batch(x, torch.Generator().manual_seed(7), 0.8, 0.0)
    b, lb = B.mix_batch(x, torch.Generator().manual_seed(7), 0.8, 0.0)
    assert la == lb and torch.equal(a, b)


def test_cutmix_pastes_one_box_from_the_partner_and_lam_is_the_share_left() -> None:
    x = _distinct_images(4)
    partner = x.flip(0)
    boxes = set()
    for seed in range(40):
        y, lam = B.mix_batch(x, torch.Generator().manual_seed(seed), mixup_alpha=0.0, cutmix_alpha=1.0)
        own = y == x
        from_partner = y == partner
        assert bool((own | from_partner).all())  # every pixel is one image's or its partner's
        assert own.float().mean().item() == pytest.approx(lam)  # lam = share of own pixels
        pasted = from_partner[0, 0]  # the box, the same for every image and channel
        assert torch.equal(from_partner, pasted.expand_as(from_partner))
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        if len(rows):
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert int(pasted.sum()) == (r1 - r0) * (c1 - c0)  # a filled rectangle
            boxes.add((r0, r1, c0, c1))
    assert len(boxes) > 10  # boxes move and change size
    # uint8 images work too (CutMix only copies pixels); Mixup asks for floats
    u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert B.mix_batch(u8, torch.Generator().manual_seed(0), 0.0, 1.0)[0].dtype == torch.uint8
    with pytest.raises(TypeError, match="floating"):
        B.mix_batch(u8, torch.Generator().manual_seed(0), 0.8, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        B.mix_batch(x, None, 0.0, 0.0)


def test_mix_switch_prob_chooses_between_cutmix_and_mixup() -> None:
    x = _distinct_images(4)
    kinds = []
    for seed in range(60):
        y, lam = B.mix_batch(x, torch.Generator().manual_seed(seed), 0.8, 1.0, switch_prob=0.5)
        kinds.append("cutmix" if bool(((y == x) | (y == x.flip(0))).all()) else "mixup")
    assert 15 < kinds.count("cutmix") < 45
    always = [B.mix_batch(x, torch.Generator().manual_seed(s), 0.8, 1.0, switch_prob=1.0)[0] for s in range(10)]
    assert all(bool(((y == x) | (y == x.flip(0))).all()) for y in always)


def test_normalize_batch() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    y = B.normalize_batch(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert y.dtype == torch.float32
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-2.0, -1.0, -0.5]))
    assert torch.allclose(y[0, :, 0, 1], torch.tensor([2.0, 1.0, 0.5]))


def test_iterate_batches_covers_the_order() -> None:
    ds = D.ImageDataset(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), [str(i) for i in range(10)])
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    got = torch.cat([y for _, y in B.iterate_batches(ds, 3, order)])
    assert got.tolist() == order.tolist()
    assert len(list(B.iterate_batches(ds, 3, order, drop_last=True))) == 3
    assert torch.cat([y for _, y in B.iterate_batches(ds, 3, order, start=2)]).tolist() == order[6:].tolist()
