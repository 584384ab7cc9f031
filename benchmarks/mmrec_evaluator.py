"""MMRec's full-ranking evaluation, ported line for line as the baseline of ``bench_train.py``.

Source: enoche/MMRec @e775373. ``src/utils/dataloader.py`` ``EvalDataLoader`` (users of the split in order of
first appearance, batches of ``eval_batch_size`` users, each with its users' training items as a mask),
``src/common/trainer.py`` ``Trainer.evaluate`` (scores, ``scores[mask] = -1e10``, ``torch.topk(scores, max(topk))``),
``src/utils/topk_evaluator.py`` ``TopKEvaluator.evaluate`` (a Python ``i in m`` test per retrieved item) and
``src/utils/metrics.py`` (``recall_``, ``ndcg_``, ``precision_``, ``map_``). Only changes: ``np.float`` (removed
from numpy) is ``np.float64``; the model's ``full_sort_predict`` (a full forward pass per batch in MMRec) is
replaced by a product with given embeddings, the same input mmrec_fast's evaluator gets.
"""

from __future__ import annotations

import numpy as np
import torch


class MMRecEvalData:
    """What MMRec's EvalDataLoader precomputes once (not part of the timed evaluation)."""

    def __init__(self, dataset, split: str, batch_size: int = 4096):
        # pandas' unique() and groupby(...).get_group(u).values, without pandas: users in order of first
        # appearance, each user's items in file order
        train_groups, eval_groups = _groups(dataset.train), _groups(dataset.split(split))
        users = dataset.split(split).users.numpy()
        _, first = np.unique(users, return_index=True)
        self.eval_u = users[np.sort(first)]
        u_ids, i_ids, self.train_pos_len_list = [], [], []
        for n, u in enumerate(self.eval_u):
            items = train_groups[u]
            self.train_pos_len_list.append(len(items))
            u_ids.extend([n] * len(items))
            i_ids.extend(items)
        self.pos_items_per_u = torch.tensor([u_ids, i_ids]).type(torch.LongTensor)
        self.eval_items_per_u = [eval_groups[u] for u in self.eval_u]
        self.eval_len_list = np.asarray([len(items) for items in self.eval_items_per_u])
        self.batch_size = batch_size

    def batches(self):
        pr, inter_pr = 0, 0
        eval_u = torch.tensor(self.eval_u).type(torch.LongTensor)
        while pr < eval_u.shape[0]:
            inter_cnt = sum(self.train_pos_len_list[pr : pr + self.batch_size])
            batch_users = eval_u[pr : pr + self.batch_size]
            batch_mask_matrix = self.pos_items_per_u[:, inter_pr : inter_pr + inter_cnt].clone()
            batch_mask_matrix[0] -= pr
            inter_pr += inter_cnt
            pr += self.batch_size
            yield [batch_users, batch_mask_matrix]


def _groups(interactions) -> dict[int, np.ndarray]:
    groups: dict[int, list[int]] = {}
    for u, i in zip(interactions.users.tolist(), interactions.items.tolist()):
        groups.setdefault(u, []).append(i)
    return {u: np.asarray(items) for u, items in groups.items()}


def mmrec_evaluate(user_embeddings, item_embeddings, eval_data: MMRecEvalData, topk=(5, 10, 20, 50),
                   metrics=("recall", "ndcg", "precision", "map")) -> dict[str, float]:  # fmt: skip
    """Trainer.evaluate + TopKEvaluator.evaluate of MMRec on precomputed embeddings."""
    batch_matrix_list = []
    for batched_data in eval_data.batches():
        scores = torch.matmul(user_embeddings[batched_data[0]], item_embeddings.transpose(0, 1))
        masked_items = batched_data[1]
        scores[masked_items[0], masked_items[1]] = -1e10
        _, topk_index = torch.topk(scores, max(topk), dim=-1)
        batch_matrix_list.append(topk_index)
    pos_items = eval_data.eval_items_per_u
    pos_len_list = eval_data.eval_len_list
    topk_index = torch.cat(batch_matrix_list, dim=0).cpu().numpy()
    bool_rec_matrix = []
    for m, n in zip(pos_items, topk_index):
        bool_rec_matrix.append([True if i in m else False for i in n])
    bool_rec_matrix = np.asarray(bool_rec_matrix)
    metric_dict = {}
    for metric in metrics:
        value = METRICS[metric](bool_rec_matrix, pos_len_list)
        for k in topk:
            metric_dict[f"{metric}@{k}"] = round(value[k - 1], 4)
    return metric_dict


def recall_(pos_index, pos_len):
    rec_ret = np.cumsum(pos_index, axis=1) / pos_len.reshape(-1, 1)
    return rec_ret.mean(axis=0)


def ndcg_(pos_index, pos_len):
    len_rank = np.full_like(pos_len, pos_index.shape[1])
    idcg_len = np.where(pos_len > len_rank, len_rank, pos_len)
    iranks = np.zeros_like(pos_index, dtype=np.float64)
    iranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    idcg = np.cumsum(1.0 / np.log2(iranks + 1), axis=1)
    for row, idx in enumerate(idcg_len):
        idcg[row, idx:] = idcg[row, idx - 1]
    ranks = np.zeros_like(pos_index, dtype=np.float64)
    ranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    dcg = 1.0 / np.log2(ranks + 1)
    dcg = np.cumsum(np.where(pos_index, dcg, 0), axis=1)
    result = dcg / idcg
    return result.mean(axis=0)


def map_(pos_index, pos_len):
    pre = pos_index.cumsum(axis=1) / np.arange(1, pos_index.shape[1] + 1)
    sum_pre = np.cumsum(pre * pos_index.astype(np.float64), axis=1)
    len_rank = np.full_like(pos_len, pos_index.shape[1])
    actual_len = np.where(pos_len > len_rank, len_rank, pos_len)
    result = np.zeros_like(pos_index, dtype=np.float64)
    for row, lens in enumerate(actual_len):
        ranges = np.arange(1, pos_index.shape[1] + 1)
        ranges[lens:] = ranges[lens - 1]
        result[row] = sum_pre[row] / ranges
    return result.mean(axis=0)


def precision_(pos_index, pos_len):
    rec_ret = pos_index.cumsum(axis=1) / np.arange(1, pos_index.shape[1] + 1)
    return rec_ret.mean(axis=0)


METRICS = {"recall": recall_, "ndcg": ndcg_, "precision": precision_, "map": map_}
