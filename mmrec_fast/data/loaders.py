"""Loaders of the two on-disk formats of this field. Both return a :class:`~mmrec_fast.data.Dataset`.

MMRec (enoche/MMRec ``src/utils/dataset.py``): a directory with ``<name>.inter``, tab-separated with a header;
columns ``userID``, ``itemID``, ``x_label`` (0 train / 1 valid / 2 test) are read, any others (rating,
timestamp) ignored; plus any of ``image_feat.npy``, ``text_feat.npy``, ``audio_feat.npy`` with row i = item i.

MMSSL / LATTICE (HKUDS/MMSSL ``utility/load_data.py``): ``train.json``, ``val.json``, ``test.json``, each a JSON
object ``{"<user id>": [item ids]}``, plus the same feature files. MMSSL's pickled ``train_mat`` is never read:
the training matrix is rebuilt from ``train.json``. Feature files are read with ``np.load(allow_pickle=False)``;
nothing is ever unpickled.

Ids are integers in [0, 2^31) (``ID_LIMIT``: the graphs index nodes with int32, and U = the largest user id + 1
embedding rows are allocated for them, so an id past the limit is a mistake in the file, not a dataset); a larger
one, or one that does not even fit int64, is a :class:`DataError` naming the file and line (the user, in json).
Text files are UTF-8, with or without a byte-order mark.

Counts: U = the largest user id + 1; I = the number of feature rows when feature files exist (every id must be
below it), else the largest item id + 1. As in MMRec (``filter_out_cod_start_users``), valid/test interactions of
users without a training interaction are dropped by default (``drop_cold_users``); the dataset's ``notes`` say how
many.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .dataset import SPLITS, DataError, Dataset, Interactions, check_finite

MODALITIES = ("image", "text", "audio")
FEATURE_FILE = "{}_feat.npy"
INTER_COLUMNS = ("userID", "itemID", "x_label")
MMSSL_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}
FORMATS = ("auto", "mmrec", "mmssl")
#: Every user, item and label value is below this (see the module docstring).
ID_LIMIT = 2**31


def load(path, *, format: str = "auto", drop_cold_users: bool = True) -> Dataset:
    """Load the dataset in directory ``path`` (a ``.inter`` or ``.json`` file names its directory).

    Args:
        path: directory (or a file in it).
        format: "mmrec" | "mmssl" | "auto" (MMRec when a ``.inter`` file is present, else MMSSL when
            ``train.json`` is).
        drop_cold_users: drop valid/test interactions of users with no training interaction (MMRec's default).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    directory = _directory(path)
    both = False
    if format == "auto":
        has_mmrec, has_mmssl = any(directory.glob("*.inter")), (directory / MMSSL_FILES["train"]).exists()
        if not (has_mmrec or has_mmssl):
            raise DataError(
                f"{directory}: no <name>.inter file (MMRec format) and no train.json / val.json / test.json "
                "(MMSSL format)"
            )
        format, both = ("mmrec" if has_mmrec else "mmssl"), has_mmrec and has_mmssl
    loader = load_mmrec if format == "mmrec" else load_mmssl
    dataset = loader(directory, drop_cold_users=drop_cold_users)
    if both:
        dataset.notes.insert(0, "both MMRec (<name>.inter) and MMSSL (train/val/test.json) files are here: loaded "
                                "the MMRec ones (--format / format= chooses)")  # fmt: skip
    return dataset


def load_mmrec(path, *, drop_cold_users: bool = True) -> Dataset:
    """Load an MMRec-format directory: ``<name>.inter`` + feature files (see the module docstring)."""
    directory = _directory(path)
    inter = _inter_file(directory, Path(path) if Path(path).suffix == ".inter" else None)
    users, items, labels = _read_inter(inter)
    features = _read_features(directory)
    num_items = _count_items(items, features, lambda i: f"{inter}, line {i + 2}")
    splits = {split: (users[labels == code], items[labels == code]) for code, split in enumerate(SPLITS)}
    return _assemble(directory.name, "mmrec", directory, splits, int(users.max()) + 1, num_items, features, drop_cold_users)


def load_mmssl(path, *, drop_cold_users: bool = True) -> Dataset:
    """Load an MMSSL/LATTICE-format directory: ``train.json`` / ``val.json`` / ``test.json`` + feature files."""
    directory = _directory(path)
    missing = [name for name in MMSSL_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (the MMSSL format needs train.json, val.json and test.json)")
    splits, places = {}, []
    for split, name in MMSSL_FILES.items():
        users, items, where = _read_json_split(directory / name)
        splits[split] = (users, items)
        places.append((len(items), where))
    all_items = np.concatenate([items for _, items in splits.values()])
    offsets = np.cumsum([0] + [n for n, _ in places])

    def where(index: int) -> str:
        part = int(np.searchsorted(offsets, index, side="right")) - 1
        return places[part][1](index - int(offsets[part]))

    features = _read_features(directory)
    num_items = _count_items(all_items, features, where)
    num_users = max(int(u.max()) + 1 for u, _ in splits.values() if u.size)
    return _assemble(directory.name, "mmssl", directory, splits, num_users, num_items, features, drop_cold_users)


# -- files --------------------------------------------------------------------------------------------------------
def _directory(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    directory = path.parent if path.is_file() else path
    if not directory.is_dir():
        raise DataError(f"{path}: not a directory")
    return directory


def _inter_file(directory: Path, chosen: Path | None) -> Path:
    if chosen is not None:
        return chosen
    candidates = sorted(directory.glob("*.inter"))
    if not candidates:
        raise DataError(f"{directory}: no <name>.inter file (MMRec format: tab-separated userID, itemID, x_label)")
    named = directory / f"{directory.name}.inter"
    if named in candidates:
        return named
    if len(candidates) > 1:
        raise DataError(f"{directory}: several .inter files ({', '.join(c.name for c in candidates)}); pass the file itself")
    return candidates[0]


def _read_inter(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, x_labels), each (E,) int64, with every line checked."""
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is dropped
    except UnicodeDecodeError as error:
        raise DataError(f"{file}: not UTF-8 text ({error})") from None
    if not lines or not lines[0].strip():
        raise DataError(f"{file}: empty; expected a header line with the columns {', '.join(INTER_COLUMNS)}")
    header = [name.strip() for name in lines[0].split("\t")]
    missing = [c for c in INTER_COLUMNS if c not in header]
    if missing:
        hint = " (the header is one field: is the file tab-separated?)" if len(header) == 1 else ""
        raise DataError(f"{file}: the header {header} lacks {', '.join(missing)}; expected tab-separated columns "
                        f"{', '.join(INTER_COLUMNS)} (others are ignored){hint}")  # fmt: skip
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise DataError(f"{file}: no interactions after the header")
    fields = [line.split("\t") for line in body]
    lengths = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
    ragged = np.flatnonzero(lengths != len(header))
    if ragged.size:
        first = int(ragged[0])
        raise DataError(
            f"{file}, line {first + 2}: {lengths[first]} tab-separated fields where the header has {len(header)} "
            f"({', '.join(header)}); {ragged.size} such line(s)"
        )
    columns = []
    for name in INTER_COLUMNS:
        position = header.index(name)
        values = _parse_integers([f[position] for f in fields], file, name)
        negative = np.flatnonzero(values < 0)
        if negative.size:
            raise DataError(f"{file}, line {int(negative[0]) + 2}: {name} {int(values[negative[0]])} is negative; ids start at 0")
        too_large = np.flatnonzero(values >= ID_LIMIT)
        if too_large.size:
            raise DataError(f"{file}, line {int(too_large[0]) + 2}: {name} {int(values[too_large[0]])} {_TOO_LARGE}")
        columns.append(values)
    users, items, labels = columns
    unknown = np.flatnonzero(labels > 2)
    if unknown.size:
        raise DataError(f"{file}, line {int(unknown[0]) + 2}: x_label {int(labels[unknown[0]])}; expected 0 (train), 1 (valid) or 2 (test)")
    return users, items, labels


_TOO_LARGE = f"is too large: ids must be below 2^31 = {ID_LIMIT} (ID_LIMIT; are the ids remapped to 0 .. n - 1?)"


def _parse_integers(strings: list[str], file: Path, column: str) -> np.ndarray:
    """(n,) int64 from decimal strings; the first unparsable one, or one outside (-2^31, 2^31), is reported with
    its line (the caller checks the range of the parsed values)."""
    try:
        return np.array(strings).astype(np.int64)
    except (ValueError, OverflowError):
        pass
    values = []
    for index, text in enumerate(strings):
        try:
            value = int(text)
        except ValueError:
            raise DataError(f"{file}, line {index + 2}: {column} {text!r} is not an integer id") from None
        if value <= -ID_LIMIT:
            raise DataError(f"{file}, line {index + 2}: {column} {text.strip()} is negative; ids start at 0")
        if value >= ID_LIMIT:
            raise DataError(f"{file}, line {index + 2}: {column} {text.strip()} {_TOO_LARGE}")
        values.append(value)
    return np.array(values, dtype=np.int64)


def _read_json_split(file: Path) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]]:
    """(users, items) (E,) int64 of one MMSSL json file, and where(e) naming the place of pair e."""
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is dropped
    except json.JSONDecodeError as error:
        raise DataError(f"{file}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{file}: not UTF-8 text ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object {{\"<user id>\": [item ids]}}, got a {type(data).__name__}")
    users, items, keys = [], [], []
    for key, user_items in data.items():
        try:
            user = int(key)
        except ValueError:
            raise DataError(f"{file}: user key {key!r} is not an integer id") from None
        if user < 0:
            raise DataError(f"{file}: user key {key!r} is negative; ids start at 0")
        if user >= ID_LIMIT:
            raise DataError(f"{file}: user key {key!r} {_TOO_LARGE}")
        if not isinstance(user_items, list) or not all(type(i) is int for i in user_items):
            shown = json.dumps(user_items)
            raise DataError(f"{file}: user {key}: expected a list of integer item ids, got {shown[:80]}{'...' if len(shown) > 80 else ''}")
        if user_items and min(user_items) < 0:
            raise DataError(f"{file}: user {key}: item id {min(user_items)} is negative; ids start at 0")
        if user_items and max(user_items) >= ID_LIMIT:
            raise DataError(f"{file}: user {key}: item id {max(user_items)} {_TOO_LARGE}")
        users.extend([user] * len(user_items))
        items.extend(user_items)
        keys.extend([key] * len(user_items))
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), lambda e: f"{file}, user {keys[e]}"


def _read_features(directory: Path) -> dict[str, torch.Tensor]:
    """modality -> (rows, d) float32 of every ``<modality>_feat.npy`` present, read without unpickling."""
    features = {}
    for modality in MODALITIES:
        file = directory / FEATURE_FILE.format(modality)
        if file.exists():
            features[modality] = _read_npy(file)
    rows = {FEATURE_FILE.format(m): f.shape[0] for m, f in features.items()}
    if len(set(rows.values())) > 1:
        raise DataError(f"{directory}: the feature files disagree on the number of items: "
                        + ", ".join(f"{name} has {n} rows" for name, n in rows.items()))  # fmt: skip
    return features


def _read_npy(file: Path) -> torch.Tensor:
    with open(file, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{file}: not a .npy file (no NumPy header); save features with np.save")
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise DataError(f"{file}: holds Python objects that would need unpickling, which mmrec_fast never does; "
                            "save a numeric array instead (np.save(path, features.astype(np.float32)))") from None  # fmt: skip
        raise DataError(f"{file}: not a readable .npy array ({error})") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{file}: cannot be read as a .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{file}: expected one .npy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise DataError(f"{file}: expected a 2-D (items, dim) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{file}: expected a numeric array, got dtype {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    check_finite(tensor, str(file))
    return tensor


def _count_items(items: np.ndarray, features: dict[str, torch.Tensor], where: Callable[[int], str]) -> int:
    if not features:
        return int(items.max()) + 1 if items.size else 0
    rows = next(iter(features.values())).shape[0]
    outside = np.flatnonzero(items >= rows)
    if outside.size:
        names = ", ".join(FEATURE_FILE.format(m) for m in features)
        first = int(outside[0])
        raise DataError(f"{where(first)}: item id {int(items[first])} is outside the {rows} rows of {names} "
                        f"(row i of a feature file is item i); {outside.size} such interaction(s)")  # fmt: skip
    return rows


def _assemble(name, kind, directory, splits, num_users, num_items, features, drop_cold_users) -> Dataset:
    for split, (users, _) in splits.items():
        if users.size == 0:
            raise DataError(f"{directory}: the {split} split is empty")
    tensors = {s: Interactions(torch.from_numpy(u), torch.from_numpy(i)) for s, (u, i) in splits.items()}
    notes = []
    if drop_cold_users:
        for split in ("valid", "test"):  # isin, not a (U,) table: O(E) memory whatever the ids are
            keep = torch.isin(tensors[split].users, tensors["train"].users)
            dropped = int((~keep).sum())
            if dropped:
                cold = torch.unique(tensors[split].users[~keep]).numel()
                notes.append(f"dropped {dropped} {split} interaction(s) of {cold} user(s) without training interactions")
                tensors[split] = tensors[split].subset(keep)
    source = {"kind": kind, "path": str(directory.resolve()), "drop_cold_users": drop_cold_users}
    return Dataset(name, num_users, num_items, tensors["train"], tensors["valid"], tensors["test"], features, source, notes)


def from_source(source: dict) -> Dataset:
    """The dataset a ``Dataset.source`` dict describes (a checkpoint's data): loaded again, or generated again."""
    kind = source.get("kind")
    if kind == "synthetic":
        from .synthetic import synthetic

        return synthetic(**{k: v for k, v in source.items() if k != "kind"})
    if kind in ("mmrec", "mmssl"):
        return load(source["path"], format=kind, drop_cold_users=source.get("drop_cold_users", True))
    raise DataError(f"unknown dataset source kind {kind!r} (expected synthetic, mmrec or mmssl)")
