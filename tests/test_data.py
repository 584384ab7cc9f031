"""Datasets: both file formats on small generated directories and on ../shared/data/tiktok, every malformed-file
case, the synthetic generator, and the BPR sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrec_fast.data import BPRSampler, DataError, Interactions, PairSampler, load, load_mmrec, load_mmssl, synthetic
from mmrec_fast.evaluate import ranking_metrics

from conftest import data_root

# user, item, x_label; user 4 has no training interaction (cold), item 5 is never interacted with
TRIPLES = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 4, 0), (1, 0, 2), (2, 2, 0), (2, 3, 1),
           (2, 4, 2), (3, 0, 0), (3, 3, 0), (3, 1, 1), (3, 2, 2), (4, 1, 1), (4, 2, 2)]  # fmt: skip
NUM_ITEMS = 6


def write_mmrec(directory, triples=TRIPLES, *, header="userID\titemID\trating\ttimestamp\tx_label", features=True):
    directory.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{u}\t{i}\t5\t{1000 + n}\t{x}" for n, (u, i, x) in enumerate(triples)]
    (directory / f"{directory.name}.inter").write_text("\n".join(lines) + "\n")
    if features:
        rng = np.random.default_rng(0)
        np.save(directory / "image_feat.npy", rng.standard_normal((NUM_ITEMS, 8)).astype(np.float32))
        np.save(directory / "text_feat.npy", rng.standard_normal((NUM_ITEMS, 4)).astype(np.float16))
    return directory


def write_mmssl(directory, triples=TRIPLES, features=True):
    directory.mkdir(parents=True, exist_ok=True)
    for code, name in enumerate(("train.json", "val.json", "test.json")):
        split: dict[str, list[int]] = {}
        for u, i, x in triples:
            if x == code:
                split.setdefault(str(u), []).append(i)
        (directory / name).write_text(json.dumps(split))
    if features:
        rng = np.random.default_rng(0)
        np.save(directory / "image_feat.npy", rng.standard_normal((NUM_ITEMS, 8)).astype(np.float32))
    return directory


def pairs(interactions: Interactions) -> set[tuple[int, int]]:
    return set(zip(interactions.users.tolist(), interactions.items.tolist()))


def expected(code, drop_cold=True):
    return {(u, i) for u, i, x in TRIPLES if x == code and (not drop_cold or u != 4)}


# -- MMRec format -------------------------------------------------------------------------------------------------
def test_load_mmrec(tmp_path):
    dataset = load_mmrec(write_mmrec(tmp_path / "toy"))
    assert dataset.name == "toy" and dataset.source["kind"] == "mmrec"
    assert (dataset.num_users, dataset.num_items) == (5, NUM_ITEMS)  # items = feature rows, beyond the largest id
    for code, split in enumerate((dataset.train, dataset.valid, dataset.test)):
        assert pairs(split) == expected(code)
        assert split.users.dtype == torch.int64
    assert set(dataset.features) == {"image", "text"}
    assert dataset.features["text"].dtype == torch.float32 and dataset.features["text"].shape == (NUM_ITEMS, 4)
    saved = np.load(tmp_path / "toy" / "image_feat.npy")
    assert torch.equal(dataset.features["image"], torch.from_numpy(saved))
    assert any("1 valid interaction(s) of 1 user(s)" in note for note in dataset.notes)
    graph = dataset.train_graph
    assert graph.shape == (5 + NUM_ITEMS, 5 + NUM_ITEMS) and graph.nnz == 2 * len(expected(0))
    assert dataset.train_matrix.shape == (5, NUM_ITEMS) and dataset.train_matrix.nnz == len(expected(0))


def test_load_mmrec_keeps_cold_users_on_request_and_ignores_column_order(tmp_path):
    directory = tmp_path / "toy"
    directory.mkdir()
    lines = ["x_label\ttimestamp\titemID\tuserID"] + [f"{x}\t7\t{i}\t{u}" for u, i, x in TRIPLES]
    (directory / "toy.inter").write_text("\n".join(lines))  # no trailing newline, no features
    dataset = load_mmrec(directory / "toy.inter", drop_cold_users=False)
    assert dataset.num_items == 5 and not dataset.features and not dataset.notes
    assert pairs(dataset.valid) == expected(1, drop_cold=False)


def test_load_mmssl_matches_mmrec(tmp_path):
    mmssl = load_mmssl(write_mmssl(tmp_path / "toy_json"))
    mmrec = load_mmrec(write_mmrec(tmp_path / "toy"))
    for split in ("train", "valid", "test"):
        assert pairs(mmssl.split(split)) == pairs(mmrec.split(split))
    assert (mmssl.num_users, mmssl.num_items) == (mmrec.num_users, mmrec.num_items)
    assert mmssl.source["kind"] == "mmssl"
    assert load(tmp_path / "toy_json").source["kind"] == "mmssl"  # auto-detected
    assert load(tmp_path / "toy").source["kind"] == "mmrec"


def test_a_directory_in_both_formats_says_which_it_loaded(tmp_path):
    both = write_mmssl(write_mmrec(tmp_path / "toy"), triples=[t for t in TRIPLES if t[0] != 0])  # not one dataset
    auto = load(both)
    assert auto.source["kind"] == "mmrec" and "loaded the MMRec ones" in auto.notes[0]
    assert repr(auto).startswith("Dataset('toy' (mmrec format):")
    chosen = load(both, format="mmssl")
    assert chosen.source["kind"] == "mmssl" and not any("both" in note for note in chosen.notes)
    assert pairs(chosen.train) != pairs(auto.train) and repr(chosen).startswith("Dataset('toy' (mmssl format):")
    assert not any("both" in note for note in load(write_mmrec(tmp_path / "only")).notes)


@pytest.mark.parametrize(
    "header, body, message",
    [
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2", "2\t3\t2"], r"line 3: 2 tab-separated fields where the header has 3"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t0\t9"], r"line 3: 4 tab-separated fields"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\tabc\t1", "2\t3\t2"], r"line 3: itemID 'abc' is not an integer id"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t1", "2.5\t3\t2"], r"line 4: userID '2.5' is not an integer id"),
        ("userID\titemID\tx_label", ["0\t1\t0", "-1\t2\t1", "2\t3\t2"], r"line 3: userID -1 is negative"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t3", "2\t3\t2"], r"line 3: x_label 3; expected 0 \(train\)"),
        ("userID\titemID\tx_label", ["0\t1\t0", "", "2\t3\t2"], r"line 3: 1 tab-separated fields"),
        # ids past int64 (an OverflowError traceback), past the id limit (1e11: a bincount of 800 GB)
        ("userID\titemID\tx_label", ["0\t1\t0", "99999999999999999999\t2\t1", "2\t3\t2"],
         r"line 3: userID 99999999999999999999 is too large: ids must be below 2\^31 = 2147483648"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t1", "2\t-99999999999999999999\t2"], r"line 4: itemID -99999999999999999999 is negative"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t100000000000000000000"], r"line 3: x_label 100000000000000000000 is too large"),
        ("userID\titemID\tx_label", ["0\t1\t0", "100000000000\t2\t1", "2\t3\t2"], r"line 3: userID 100000000000 is too large"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2147483648\t1", "2\t3\t2"], r"line 3: itemID 2147483648 is too large"),
        ("userID\titemID\trating", ["0\t1\t0"], r"lacks x_label"),
        ("userID itemID x_label", ["0 1 0"], r"lacks userID, itemID, x_label.*is the file tab-separated"),
        ("userID\titemID\tx_label", [], r"no interactions after the header"),
        ("userID\titemID\tx_label", ["0\t1\t0", "1\t2\t0"], r"the valid split is empty"),
        ("userID\titemID\tx_label", ["0\t1\t1", "1\t2\t2"], r"the train split is empty"),
    ],
)
def test_malformed_inter_files(tmp_path, header, body, message):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "bad.inter").write_text("\n".join([header] + body) + "\n")
    with pytest.raises(DataError, match=message) as error:
        load_mmrec(directory)
    assert "\n" not in str(error.value) and str(directory) in str(error.value)


def test_a_byte_order_mark_is_accepted(tmp_path):
    """A UTF-8 BOM before the header gave "header lacks '\\ufeffuserID'"; json files may start with one too."""
    plain = load_mmrec(write_mmrec(tmp_path / "plain"))
    directory = write_mmrec(tmp_path / "bom")
    inter = directory / "bom.inter"
    inter.write_bytes(b"\xef\xbb\xbf" + inter.read_bytes())
    with_bom = load_mmrec(directory)
    assert pairs(with_bom.train) == pairs(plain.train) and with_bom.num_users == plain.num_users
    directory = write_mmssl(tmp_path / "json")
    for name in ("train.json", "val.json", "test.json"):
        (directory / name).write_bytes(b"\xef\xbb\xbf" + (directory / name).read_bytes())
    assert pairs(load_mmssl(directory).train) == pairs(plain.train)


def test_empty_inter_file_and_missing_files(tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    with pytest.raises(DataError, match="no <name>.inter file"):
        load_mmrec(directory)
    with pytest.raises(DataError, match="no <name>.inter file .* and no train.json"):
        load(directory)
    (directory / "bad.inter").write_text("")
    with pytest.raises(DataError, match="empty; expected a header line"):
        load_mmrec(directory)
    with pytest.raises(DataError, match="no such file or directory"):
        load(tmp_path / "absent")
    with pytest.raises(DataError, match="missing val.json, test.json"):
        (directory / "train.json").write_text("{}")
        load_mmssl(directory)


def test_cold_users_only_in_test_leaves_an_empty_split(tmp_path):
    triples = [(0, 0, 0), (0, 1, 1), (1, 2, 2)]  # user 1's only test interaction is dropped as cold-start
    with pytest.raises(DataError, match="the test split is empty"):
        load_mmrec(write_mmrec(tmp_path / "cold", triples, features=False))


def test_item_ids_beyond_the_feature_rows(tmp_path):
    directory = write_mmrec(tmp_path / "toy", TRIPLES + [(1, 9, 0)])
    with pytest.raises(DataError, match=r"toy.inter, line 18: item id 9 is outside the 6 rows of image_feat.npy, text_feat.npy"):
        load_mmrec(directory)
    directory = write_mmssl(tmp_path / "json", TRIPLES + [(2, 7, 2)])
    with pytest.raises(DataError, match=r"test.json, user 2: item id 7 is outside the 6 rows"):
        load_mmssl(directory)


def test_bad_feature_files(tmp_path):
    directory = write_mmrec(tmp_path / "toy")
    image = np.ones((NUM_ITEMS, 8), dtype=np.float32)
    image[1, 3] = np.nan
    image[4, 0] = np.inf
    image[4, 5] = np.nan
    np.save(directory / "image_feat.npy", image)
    with pytest.raises(DataError, match=r"image_feat.npy: 2 NaN and 1 inf values in 2 rows \(rows 1, 4; first at row 1, column 3\)"):
        load_mmrec(directory)
    np.save(directory / "image_feat.npy", np.ones(NUM_ITEMS, dtype=np.float32))
    with pytest.raises(DataError, match=r"expected a 2-D \(items, dim\) array, got shape \(6,\)"):
        load_mmrec(directory)
    np.save(directory / "image_feat.npy", np.ones((NUM_ITEMS + 1, 8), dtype=np.float32))
    with pytest.raises(DataError, match="disagree on the number of items: image_feat.npy has 7 rows, text_feat.npy has 6"):
        load_mmrec(directory)
    (directory / "image_feat.npy").write_bytes(b"not an npy file")
    with pytest.raises(DataError, match="image_feat.npy: not a .npy file"):
        load_mmrec(directory)


class _Trap:
    """Unpickling this object would record it: the loaders must never unpickle."""

    unpickled = False

    def __reduce__(self):
        return (_Trap._spring, ())

    @staticmethod
    def _spring():
        _Trap.unpickled = True
        return _Trap()


def test_pickled_feature_files_are_never_unpickled(tmp_path):
    directory = write_mmrec(tmp_path / "toy")
    objects = np.empty((NUM_ITEMS, 1), dtype=object)
    objects[:] = [[_Trap()] for _ in range(NUM_ITEMS)]
    np.save(directory / "audio_feat.npy", objects, allow_pickle=True)
    with pytest.raises(DataError, match="audio_feat.npy: holds Python objects that would need unpickling"):
        load_mmrec(directory)
    assert not _Trap.unpickled


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"0": [1, 2], "1": [3}', r"train.json, line 1, column 22: not valid JSON"),
        ('[[0, 1]]', r"expected a JSON object"),
        ('{"zero": [1]}', r"user key 'zero' is not an integer id"),
        ('{"0": 1}', r"user 0: expected a list of integer item ids, got 1"),
        ('{"0": [1, "2"]}', r'user 0: expected a list of integer item ids, got \[1, "2"\]'),
        ('{"0": [1, 2.0]}', r"user 0: expected a list of integer item ids"),
        ('{"0": [1, -2]}', r"user 0: item id -2 is negative"),
        ('{"-3": [1]}', r"user key '-3' is negative"),
        ('{"99999999999999999999": [1]}', r"user key '99999999999999999999' is too large: ids must be below 2\^31"),
        ('{"100000000000": [1]}', r"user key '100000000000' is too large"),
        ('{"0": [1, 99999999999999999999]}', r"user 0: item id 99999999999999999999 is too large"),
        ('{"0": [1, -99999999999999999999]}', r"user 0: item id -99999999999999999999 is negative"),
        ("{}", r"the train split is empty"),
    ],
)
def test_malformed_json_files(tmp_path, content, message):
    directory = write_mmssl(tmp_path / "toy", features=False)
    (directory / "train.json").write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_mmssl(directory)
    assert "\n" not in str(error.value)


# -- the shared real data -----------------------------------------------------------------------------------------
def test_tiktok_in_both_formats():
    root = data_root()
    if root is None or not (root / "tiktok" / "tiktok.inter").exists():
        pytest.skip("../shared/data/tiktok not present (set MMREC_FAST_DATA)")
    mmrec, mmssl = load_mmrec(root / "tiktok"), load_mmssl(root / "tiktok")
    for dataset in (mmrec, mmssl):
        assert (dataset.num_users, dataset.num_items) == (9308, 6710)
        assert (len(dataset.train), len(dataset.valid), len(dataset.test)) == (59541, 3046, 6125)  # 5 + 5 cold dropped
        assert {m: tuple(f.shape) for m, f in dataset.features.items()} == {"image": (6710, 128), "audio": (6710, 128)}
    for split in ("train", "valid", "test"):
        assert pairs(mmrec.split(split)) == pairs(mmssl.split(split))


# -- synthetic ----------------------------------------------------------------------------------------------------
def test_synthetic_is_reproducible_and_has_the_requested_sizes():
    a = synthetic("small", seed=3)
    b = synthetic("small", seed=3)
    c = synthetic("small", seed=4)
    assert torch.equal(a.train.items, b.train.items) and torch.equal(a.features["image"], b.features["image"])
    assert not torch.equal(a.train.items[:1000], c.train.items[:1000])
    assert (a.num_users, a.num_items) == (2000, 1000)
    assert len(a.train) + len(a.valid) + len(a.test) == 24_000
    assert {m: tuple(f.shape) for m, f in a.features.items()} == {"image": (1000, 64), "text": (1000, 32)}
    assert a.source["kind"] == "synthetic" and a.source["seed"] == 3
    every = Interactions(torch.cat([a.train.users, a.valid.users, a.test.users]), torch.cat([a.train.items, a.valid.items, a.test.items]))
    assert len(every.unique_pairs(a.num_items)) == len(every)  # distinct pairs
    degrees = torch.bincount(every.users, minlength=a.num_users)
    assert int(degrees.min()) >= 5
    assert bool((torch.bincount(a.valid.users, minlength=a.num_users) >= 1).all())  # every user has valid and test items
    assert bool((torch.bincount(a.test.users, minlength=a.num_users) >= 1).all())
    popularity = torch.bincount(every.items, minlength=a.num_items).sort(descending=True).values.double()
    assert popularity[:10].mean() > 8 * popularity.median()  # power-law items
    assert degrees.double().max() > 8 * degrees.double().median()  # power-law users


def test_synthetic_baby_like_sizes():
    dataset = synthetic("baby-like", feature_dims={})  # features skipped to keep the test fast
    assert (dataset.num_users, dataset.num_items) == (19_445, 7_050)
    assert len(dataset.train) + len(dataset.valid) + len(dataset.test) == 160_792
    from mmrec_fast.data import PRESETS

    assert PRESETS["baby-like"][3] == {"image": 4096, "text": 384}


def test_synthetic_features_carry_signal():
    """A content-only scorer (user = mean feature of their training items) finds test items far better with the
    true features than with their rows permuted."""
    dataset = synthetic("small", seed=1)
    counts = torch.bincount(dataset.train.users, minlength=dataset.num_users).clamp(min=1).unsqueeze(1).float()
    for modality, features in dataset.features.items():
        recalls = []
        for item_rows in (features, features[torch.randperm(dataset.num_items, generator=torch.Generator().manual_seed(0))]):
            profiles = torch.zeros(dataset.num_users, item_rows.shape[1]).index_add_(0, dataset.train.users, item_rows[dataset.train.items]) / counts
            metrics = ranking_metrics((profiles, item_rows), dataset.test, dataset.num_items, exclude=dataset.train_matrix, ks=(20,), metrics=("recall",))
            recalls.append(metrics["recall@20"])
        assert recalls[0] > 2 * recalls[1], (modality, recalls)


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic preset 'huge'"):
        synthetic("huge")
    with pytest.raises(ValueError, match="num_interactions must lie in"):
        synthetic("small", num_interactions=10)


# -- sampler ------------------------------------------------------------------------------------------------------
def test_sampler_never_returns_a_positive_and_covers_every_interaction():
    dataset = synthetic("small", num_users=300, num_items=60, num_interactions=3000, feature_dims={}, seed=2)
    train = dataset.train
    positives = set(zip(train.users.tolist(), train.items.tolist()))
    sampler = BPRSampler(train, dataset.num_users, dataset.num_items, batch_size=256, seed=5)
    assert len(sampler) == -(-len(train) // 256)
    for epoch in range(3):
        batches = list(sampler.epoch(epoch))
        assert all(b.shape[0] == 3 and b.dtype == torch.int64 for b in batches)
        assert all(b.shape[1] == 256 for b in batches[:-1])
        table = torch.cat(batches, dim=1)
        assert sorted(zip(table[0].tolist(), table[1].tolist())) == sorted(zip(train.users.tolist(), train.items.tolist()))
        negatives = set(zip(table[0].tolist(), table[2].tolist()))
        assert not negatives & positives
        assert int(table[2].min()) >= 0 and int(table[2].max()) < dataset.num_items


def test_sampler_is_reproducible_and_uniform():
    # user 0 has positives {0, 2, 5} among 7 items: negatives must be uniform over {1, 3, 4, 6}
    train = Interactions(torch.tensor([0, 0, 0] * 4000 + [1]), torch.tensor([0, 2, 5] * 4000 + [3]))
    sampler = BPRSampler(train, 2, 7, batch_size=1000, seed=11)
    first = torch.cat(list(sampler.epoch(0)), dim=1)
    assert torch.equal(first, torch.cat(list(BPRSampler(train, 2, 7, batch_size=1000, seed=11).epoch(0)), dim=1))
    assert not torch.equal(first, torch.cat(list(sampler.epoch(1)), dim=1))
    negatives = first[2][first[0] == 0]
    counts = torch.bincount(negatives, minlength=7)
    assert counts[[0, 2, 5]].sum() == 0
    expected_count = negatives.numel() / 4
    # 12,000 draws over 4 values: the standard deviation of a count is ~47; 5 sigma is far from flaky
    assert bool(((counts[[1, 3, 4, 6]] - expected_count).abs() < 5 * (expected_count * 0.75) ** 0.5).all()), counts


def test_sampler_rejects_a_user_with_every_item():
    train = Interactions(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(DataError, match="user 0 has interacted with all 3 candidate items"):
        BPRSampler(train, 2, 3)


def test_negatives_from_the_training_items_only_and_pair_batches():
    # items 1 and 6 never occur in training: MMRec's pool leaves them out; user 0's positives {0, 2, 5} too
    train = Interactions(torch.tensor([0, 0, 0] * 4000 + [1, 1]), torch.tensor([0, 2, 5] * 4000 + [3, 4]))
    sampler = BPRSampler(train, 2, 7, batch_size=1000, seed=11, negatives="train_items")
    table = torch.cat(list(sampler.epoch(0)), dim=1)
    counts = torch.bincount(table[2][table[0] == 0], minlength=7)
    assert counts[[0, 1, 2, 5, 6]].sum() == 0 and counts[3] > 0 and counts[4] > 0
    expected_count = counts.sum().item() / 2
    assert bool(((counts[[3, 4]] - expected_count).abs() < 5 * (expected_count * 0.25) ** 0.5).all()), counts
    assert set(table[2][table[0] == 1].tolist()) <= {0, 2, 5}
    # with every item a candidate the draws are those of the default pool, bitwise
    everything = Interactions(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(torch.cat(list(BPRSampler(everything, 2, 5, 2, seed=3, negatives="train_items").epoch(0)), 1),
                       torch.cat(list(BPRSampler(everything, 2, 5, 2, seed=3).epoch(0)), 1))  # fmt: skip
    with pytest.raises(DataError, match="user 0 has interacted with all 3 candidate items"):
        BPRSampler(Interactions(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])), 1, 9, negatives="train_items")
    with pytest.raises(ValueError, match="negatives must be one of"):
        BPRSampler(train, 2, 7, negatives="popular")
    pairs = PairSampler(train, 2, 7, batch_size=1000, seed=11)
    table_pairs = torch.cat(list(pairs.epoch(0)), dim=1)
    assert table_pairs.shape == (2, len(train)) and torch.equal(table_pairs, table[:2])  # the same order as BPR's
