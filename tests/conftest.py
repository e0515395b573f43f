"""Shared fixtures: a small synthetic MNIST in the real IDX format and torchvision's layout
(so unit tests run anywhere, offline), and the real MNIST from $DATA_DIR for integration tests.

Two tiers: `python -m pytest -m "not slow"` runs the quick tests (synthetic data, seconds each);
`python -m pytest` runs them all, as CI does. A test is slow when it needs one of SLOW_FIXTURES (the real
MNIST, a trained model, the smoke study, a running server, the folders of people's images) or sits in SLOW_MODULES (a browser, load);
other long tests carry @pytest.mark.slow themselves."""

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402


SLOW_FIXTURES = {"real_data", "real_data_dir", "trained_convnet", "smoke_root", "server", "test_digits", "answers", "form_answers"}
SLOW_MODULES = {"test_serve_page", "test_serve_load"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def in_ci() -> bool:
    """True under CI: $CI set to anything but "", "0", "false" or "no" (GitHub, GitLab and .ci/run set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(why: str, fix: str) -> None:
    """A test that cannot run here: outside CI a skip giving the reason; under CI a failure
    (a missing tool must never let CI pass without the test)."""
    if in_ci():
        pytest.fail(f"{why}; {fix}", pytrace=False)
    pytest.skip(f"{why} (under CI=true this fails)")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Unsigned-byte IDX: magic 0x0801 (labels, 1-D) or 0x0803 (images, 3-D), big-endian dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {1: 0x0801, 3: 0x0803}[array.ndim]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images whose class is learnable: class c draws a bright 6x6 block at one of
    ten fixed places (jittered by +-1 px), on faint noise. Labels cycle so classes are balanced."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = 4 + 14 * (c // 5) + rng.integers(-1, 2), 2 + 5 * (c % 5) + rng.integers(-1, 2)
        images[i, r:r + 6, q:q + 6] = 255
    return images, labels


def make_synthetic_root(root: Path, n_train: int = 1200, n_test: int = 200, folder: str = "MNIST") -> Path:
    raw = root / folder / "raw"
    x, y = synthetic_digits(n_train, seed=1)
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    x, y = synthetic_digits(n_test, seed=2)
    write_idx(raw / "t10k-images-idx3-ubyte", x)
    write_idx(raw / "t10k-labels-idx1-ubyte", y)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_root(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_root):
    return data.load_data(data_dir=synthetic_root, download=False)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real MNIST. Missing data is a failure, never a skip: CI must not pass without it."""
    root = data.resolve_data_dir(os.environ.get("DATA_DIR"))
    raw = root / "MNIST" / "raw"
    missing = [f.name for f in data.DATASETS["mnist"].files if not (raw / f.name).is_file()]
    if missing:
        pytest.fail(f"integration tests need the real MNIST: {raw} lacks {', '.join(missing)}; "
                    f"set DATA_DIR to a folder holding MNIST/raw/ (e.g. DATA_DIR=../shared/data)", pytrace=False)
    return root


@pytest.fixture(scope="session")
def real_data(real_data_dir):
    return data.load_data(data_dir=real_data_dir, download=False)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in text: rows of cells, the separator row left out."""
    out, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            out.append(rows)
            rows = []
    return out
