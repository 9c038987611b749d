import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from stacnas.data import (DEBIAN_FASHION_MNIST, Cutout, DataError, TensorTransform, get_loaders, read_digits,
                          read_idx, split_indices)


def _write_cifar(root, name, n_train_per_batch=6, n_test=5):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key, classes = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], \
            "labels", 10
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train"], "fine_labels", 100
    folder.mkdir(parents=True)
    for f, n in [(f, n_train_per_batch) for f in files] + [("test_batch" if name == "cifar10" else "test", n_test)]:
        batch = {"batch_label": f, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: rng.integers(0, classes, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


@pytest.mark.parametrize("name, n_train, classes", [("cifar10", 30, 10), ("cifar100", 6, 100)])
def test_cifar_python_batches(tmp_path, name, n_train, classes):
    folder = _write_cifar(tmp_path, name)
    loaders = get_loaders(name, str(tmp_path), batch_size=4, augment=False)
    assert len(loaders.train.dataset) == n_train and len(loaders.test.dataset) == 5
    assert loaders.info.num_classes == classes and loaders.info.in_channels == 3
    x, y = next(iter(loaders.test))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    # the first test image, normalized, is the first row of the test file
    with open(folder / ("test_batch" if name == "cifar10" else "test"), "rb") as fh:
        raw = pickle.load(fh)["data"][0].reshape(3, 32, 32) / 255.0
    mean, std = loaders.test.dataset.transform.mean, loaders.test.dataset.transform.std
    assert torch.allclose(x[0], (torch.from_numpy(raw).float() - mean) / std, atol=1e-5)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/stacnas-pwned",))


def test_cifar_refuses_pickles_with_code(tmp_path):
    folder = _write_cifar(tmp_path, "cifar10")
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": _Exploit(), "labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load"):
        get_loaders("cifar10", str(tmp_path))
    assert not os.path.exists("/tmp/stacnas-pwned")


def test_cifar_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/cifar-10-batches-py lacks data_batch_1.*--download"):
        get_loaders("cifar10", str(tmp_path))


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(1)
    suffix = ".gz" if compress else ""
    images = rng.integers(0, 256, (12, 28, 28))
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 12), compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (3, 28, 28)), compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 3), compress)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    loaders = get_loaders("fashion-mnist", str(tmp_path), batch_size=5, val_fraction=0.25)
    assert len(loaders.train.dataset) == 9 and len(loaders.val.dataset) == 3 and len(loaders.test.dataset) == 3
    x, _ = next(iter(loaders.train))
    assert x.shape == (5, 1, 28, 28)


def test_idx_rejects_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        get_loaders("fashion-mnist", str(tmp_path))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    loaders = get_loaders("fashion-mnist", batch_size=256, augment=False)
    assert len(loaders.train.dataset) == 60000 and len(loaders.test.dataset) == 10000
    x, y = next(iter(loaders.test))
    assert x.shape == (256, 1, 28, 28)
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalized with the dataset's stats
    assert sorted(torch.unique(torch.tensor([loaders.train.dataset.labels[i] for i in range(2000)])).tolist()) \
        == list(range(10))


def test_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / cls /
                                                                                          f"{i}.png")
    loaders = get_loaders("folder", str(tmp_path), batch_size=4, image_size=16)
    assert loaders.info.num_classes == 2 and loaders.info.image_size == 16
    assert len(loaders.train.dataset) == 6 and len(loaders.test.dataset) == 4
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 16, 16)
    x, _ = next(iter(get_loaders("imagenet", str(tmp_path), batch_size=2, image_size=16).test))
    assert x.shape == (2, 3, 16, 16)


def test_image_folder_missing_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="must hold train/ and val/"):
        get_loaders("folder", str(tmp_path))


def test_digits_builtin_splits_are_fixed_and_disjoint():
    a = get_loaders("digits", val_fraction=0.5, seed=3)
    b = get_loaders("digits", val_fraction=0.5, seed=3)
    assert len(a.test.dataset) == 300 and len(a.train.dataset) + len(a.val.dataset) == 1497
    assert a.train.dataset.indices == b.train.dataset.indices
    assert set(a.train.dataset.indices).isdisjoint(a.val.dataset.indices)
    x, y = next(iter(a.train))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64


def test_training_order_is_seeded():
    first = lambda seed: next(iter(get_loaders("digits", seed=seed, augment=False).train))[1]  # noqa: E731
    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))


def test_split_indices_bounds():
    train, val = split_indices(10, 0.5, 0)
    assert sorted(train + val) == list(range(10)) and len(val) == 5
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.0, 0)


@pytest.mark.parametrize("channels, size, pad, flip, cutout", [(1, 8, 1, False, 0), (1, 28, 2, True, 0),
                                                           (3, 32, 4, True, 16), (3, 9, 3, True, 0)])
def test_tensor_transform_is_torchvisions_pipeline(channels, size, pad, flip, cutout):
    """The in-memory datasets' augmentation gives, from the same seed, the very numbers torchvision's v2 pipeline
    gives (the results committed under benchmarks/ were made with it), every image and draw."""
    from torchvision.transforms import v2

    mean, std = tuple(0.3 + 0.1 * c for c in range(channels)), tuple(0.2 + 0.05 * c for c in range(channels))
    scale = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    augment = [v2.RandomCrop(size, padding=pad)] + ([v2.RandomHorizontalFlip()] if flip else []) + scale \
        + ([Cutout(cutout)] if cutout else [])
    images = torch.randint(0, 256, (40, channels, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    for ours, theirs in ((TensorTransform(mean, std, pad, flip, True, cutout), v2.Compose(augment)),
                         (TensorTransform(mean, std, pad, flip, False, cutout), v2.Compose(scale))):
        found, expected = [], []
        for transform, results in ((ours, found), (theirs, expected)):
            torch.manual_seed(7)
            results.extend([transform(img) for img in images] + [torch.rand(3)])  # and the draws after them
        assert all(torch.equal(a, b) for a, b in zip(found, expected))


def test_digits_are_scikit_learns():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = read_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(labels, digits.target)


def test_cutout_zeroes_a_clipped_square():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    out = Cutout(16)(img)
    zeros = (out == 0).all(0)
    rows, cols = zeros.any(1).sum().item(), zeros.any(0).sum().item()
    assert 0 < rows <= 16 and 0 < cols <= 16 and zeros.sum().item() == rows * cols
    assert torch.equal(img, torch.ones(3, 32, 32))  # the input is not modified


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'mnist2'"):
        get_loaders("mnist2")
