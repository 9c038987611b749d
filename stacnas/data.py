"""Train / validation / test loaders for every dataset stacnas knows.

`digits` (scikit-learn's bundled handwritten digits, 8×8) is the built-in offline default. `fashion-mnist` reads
the standard IDX files (and finds Debian's `dataset-fashion-mnist` by itself), `cifar10`/`cifar100` the python
batch files (downloaded where a network exists), `imagenet` and `folder` an ImageFolder tree.

The validation split (for bi-level search) is carved from the training set with a seeded permutation; the test
split is always the dataset's own test set (or, for digits, a fixed held-out 300 images).
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import UsageError

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagenet", "folder")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label_key="labels", classes=10,
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a",
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], label_key="fine_labels",
                     classes=100, url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85",
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(UsageError):
    """A dataset that is missing or malformed; the message says where it looked and how to get the data."""


@dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int


class Cutout:
    """DARTS' cutout: zero one length×length square (clipped at the border) centred uniformly in the image."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.length // 2), min(h, cy + self.length // 2)
        x0, x1 = max(0, cx - self.length // 2), min(w, cx + self.length // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img


class TensorImages(Dataset):
    """Images held in memory as uint8 (N, C, H, W) with int64 labels; the transform runs per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


class TensorTransform:
    """DARTS' augmentation of a uint8 (C, H, W) image held in memory: zero-pad by `pad` and crop back to its size at
    a random offset, flip horizontally with probability 1/2 (when `flip`), scale to [0, 1], normalize, cut out
    (`cutout` > 0). The same numbers, from the same random draws, as torchvision's v2.RandomCrop(size, padding=pad),
    v2.RandomHorizontalFlip(), v2.ToDtype(float32, scale=True) and v2.Normalize (tests/test_data.py holds it to
    them), without importing torchvision: that import takes 1.7 s (most of it torch._dynamo, which a search's first
    optimizer imports later anyway; processes that train nothing are spared all of it)."""

    def __init__(self, mean, std, pad: int, flip: bool, augment: bool, cutout: int = 0):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad, self.flip, self.augment = pad, flip, augment
        self.cutout = Cutout(cutout) if augment and cutout > 0 else None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.augment:
            img = self._random_crop(img)
            if self.flip and torch.rand(1) < 0.5:
                img = img.flip(-1)
        x = img.to(torch.float32).mul_(1.0 / 255).sub(self.mean).div_(self.std)
        return x if self.cutout is None else self.cutout(x)

    def _random_crop(self, img: torch.Tensor) -> torch.Tensor:
        if self.pad == 0:
            return img
        h, w = img.shape[-2:]
        padded = torch.nn.functional.pad(img, [self.pad] * 4)
        top = int(torch.randint(0, 2 * self.pad + 1, size=()))  # v2.RandomCrop draws the row first, then the column
        left = int(torch.randint(0, 2 * self.pad + 1, size=()))
        return padded[..., top:top + h, left:left + w]


# ---- readers of the on-disk formats --------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read{' as gzip' if path.suffix == '.gz' else ''} ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DataError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: the CIFAR batches need nothing else, and a file that
    asks for any other class is refused instead of run."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # Python 3 writes bytes this way in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: str):
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
        raise DataError(f"{path} is not a CIFAR python batch ({err})") from None
    return data, labels


# ---- datasets ----------------------------------------------------------------------------------------------

def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) valued 0–16, labels): scikit-learn's bundled handwritten digits, read from the file
    sklearn.datasets.load_digits reads (tests/test_data.py holds them equal), without importing scikit-learn (0.8 s)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataError("the digits dataset is scikit-learn's: install it (pip install scikit-learn)")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _digits(augment, cutout):
    pixels, targets = read_digits()
    images = torch.from_numpy(np.rint(pixels * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(targets)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # a fixed test split
    test_idx, train_idx = order[:300], order[300:]
    mean = images[train_idx].float().mean().item() / 255
    std = images[train_idx].float().std().item() / 255
    train_tf = TensorTransform((mean,), (std,), 1, False, augment, cutout)
    test_tf = TensorTransform((mean,), (std,), 1, False, False)
    return (TensorImages(images[train_idx], labels[train_idx], train_tf),
            TensorImages(images[test_idx], labels[test_idx], test_tf), DataInfo("digits", 10, 1, 8))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_mnist(root, augment, cutout):
    roots = [Path(root)] if root else [Path("data/fashion-mnist"), DEBIAN_FASHION_MNIST]
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for r in roots:
        paths = [_find_idx(r, s) for s in stems]
        if all(paths):
            break
    else:
        raise DataError(f"fashion-mnist: the IDX files ({', '.join(stems)}, optionally .gz) are not in "
                        f"{' or '.join(map(str, roots))}; install Debian's package dataset-fashion-mnist or "
                        "pass --data-root DIR holding them")
    arrays = [read_idx(p) for p in paths]
    to_images = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731
    to_labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    mean, std = (0.2860,), (0.3530,)
    return (TensorImages(to_images(arrays[0]), to_labels(arrays[1]),
                         TensorTransform(mean, std, 2, True, augment, cutout)),
            TensorImages(to_images(arrays[2]), to_labels(arrays[3]),
                         TensorTransform(mean, std, 2, True, False)),
            DataInfo("fashion-mnist", 10, 1, 28))


def _cifar(name, root, augment, cutout, download):
    spec = _CIFAR[name]
    root = Path(root or "data")
    folder = root / spec["folder"]
    if not folder.is_dir() and download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(spec["url"], str(root), md5=spec["md5"])
    missing = [f for f in spec["train"] + spec["test"] if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{name}: {folder} lacks {', '.join(missing)}; pass --data-root DIR holding "
                        f"{spec['folder']}/ (extracted from {spec['url']}) or add --download where a network exists")

    def load(files):
        parts = [read_cifar_batch(folder / f, spec["label_key"]) for f in files]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    mean, std = spec["mean"], spec["std"]
    return (TensorImages(*load(spec["train"]), TensorTransform(mean, std, 4, True, augment, cutout)),
            TensorImages(*load(spec["test"]), TensorTransform(mean, std, 4, True, False)),
            DataInfo(name, spec["classes"], 3, 32))


def _read_image(path: str):
    """An image file as RGB; a file that is not a readable image names itself (it is read mid-epoch)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path} is not a readable image ({err}); remove or replace it") from None


def _image_folder(name, root, augment, cutout, image_size):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if not root:
        raise DataError(f"{name}: pass --data-root DIR holding train/ and val/ (or test/) with one folder per class")
    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{name}: {root} must hold train/ and val/ (or test/), one sub-folder per class")
    size = image_size or (224 if name == "imagenet" else 32)
    base = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    if not augment:
        train_steps = [v2.Resize(int(size * 8 / 7)), v2.CenterCrop(size)]
    elif name == "imagenet":  # DARTS' ImageNet augmentation
        train_steps = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), v2.ColorJitter(0.4, 0.4, 0.4, 0.2)]
    else:
        train_steps = [v2.Resize(size), v2.CenterCrop(size), v2.RandomCrop(size, padding=size // 8),
                       v2.RandomHorizontalFlip()]
    tail = [Cutout(cutout)] if augment and cutout > 0 else []
    try:
        train = ImageFolder(str(root / "train"), transform=v2.Compose(train_steps + base + tail),
                            loader=_read_image)
        test = ImageFolder(str(test_dir), transform=v2.Compose([v2.Resize(int(size * 8 / 7)), v2.CenterCrop(size)]
                                                                 + base), loader=_read_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{name}: {err}") from None
    if train.classes != test.classes:
        raise DataError(f"{name}: train/ and {test_dir.name}/ hold different class folders")
    return train, test, DataInfo(name, len(train.classes), 3, size)


def datasets(name="digits", root=None, augment=True, cutout=0, download=False, image_size=None):
    """(train, test, DataInfo) for a dataset name."""
    if name == "digits":
        return _digits(augment, cutout)
    if name == "fashion-mnist":
        return _fashion_mnist(root, augment, cutout)
    if name in _CIFAR:
        return _cifar(name, root, augment, cutout, download)
    if name in ("imagenet", "folder"):
        return _image_folder(name, root, augment, cutout, image_size)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


class EpochSampler(Sampler):
    """Shuffled indices that depend only on (seed, epoch), sharded across data-parallel ranks.

    The order of an epoch can be rebuilt from scratch, which is what makes a resumed run see the same batches as
    an uninterrupted one: `set_epoch(epoch, skip=k)` starts the epoch after its first k indices of this rank.
    Every rank gets the same number of indices (the permutation is padded by wrapping, as DistributedSampler does).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.per_rank = -(-n // world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + 1000003 * self.epoch))
            order = order.tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    info: DataInfo

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Rebuild the shuffled order of the training (and validation) set for this epoch, skipping batches done.

        Exact on resume with workers=0 (augmentation draws from the restored global RNG); with worker processes
        the augmentation of a resumed epoch is seeded afresh.
        """
        for loader in (self.train, self.val):
            if loader is not None:
                loader.sampler.set_epoch(epoch, skip_batches * loader.batch_size)
                loader.generator.manual_seed(loader.sampler.seed + 7919 * epoch)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of range(n) into (train, val); val_fraction=0.5 is DARTS' bi-level split."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(n * val_fraction))
    return order[n_val:], order[:n_val]


def get_loaders(name="digits", root=None, batch_size=64, val_fraction=0.0, augment=True, cutout=0, workers=0,
                seed=0, download=False, image_size=None, limit=None, rank=0, world=1) -> Loaders:
    """Loaders for training, an optional validation split and the test set.

    Training and validation batches are shuffled by an EpochSampler (order fixed by seed and epoch; call
    `Loaders.set_epoch` before each epoch) and sharded over `world` data-parallel ranks; batch_size is per rank.
    The test set is neither shuffled nor sharded. limit: keep at most this many training and test images.
    """
    train, test, info = datasets(name, root, augment, cutout, download, image_size)
    if limit:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    train_idx, val_idx = split_indices(len(train), val_fraction, seed)
    if not train_idx or (val_fraction > 0 and not val_idx):
        raise DataError(f"{info.name}: {len(train)} training image(s) are too few to hold {val_fraction:.0%} out "
                        "for validation; use more (--limit) or one-level search")
    pin = torch.cuda.is_available()

    def loader(dataset, sampler):
        # Its own generator: starting an epoch must not draw from the global RNG (a resumed run would then differ),
        # and worker seeds follow (seed, epoch) — set in Loaders.set_epoch.
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                          persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    train_set = Subset(train, train_idx) if val_idx else train
    val_set = Subset(train, val_idx) if val_idx else None
    return Loaders(
        train=loader(train_set, EpochSampler(len(train_set), seed, True, rank, world)),
        val=loader(val_set, EpochSampler(len(val_set), seed + 1, True, rank, world)) if val_set else None,
        test=loader(test, EpochSampler(len(test), seed, False)),
        info=info,
    )
