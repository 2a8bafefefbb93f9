"""FOCUS (Dobler & de Melo, 2023): embeddings for new vocabulary pieces as a sparse mix of the
rows of the pieces the old and new vocabularies share, weighted by how alike the pieces occur
in the text. `auxiliary_embeddings` stands in for FOCUS's auxiliary fastText model (a truncated
SVD of co-occurrence PMI); `focus_rows` gives each new piece its row (`sparsemax` weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def auxiliary_embeddings(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], dim: int = 64, window: int = 4,
                         max_tokens: int = 12_000) -> tuple[dict[int, int], torch.Tensor]:
    """Static token embeddings learnt from `texts` under `tokenizer`, as FOCUS's auxiliary fastText
    model is, here by a truncated SVD of the positive PMI of co-occurrences within `window` tokens.

    Returns ({token id: row}, unit-length rows) for the `max_tokens` most frequent tokens.
    """
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    counts = np.bincount(np.fromiter((i for seq in ids for i in seq), dtype=np.int64), minlength=len(tokenizer))
    kept = np.argsort(-counts)[:max_tokens]
    kept = kept[counts[kept] > 1]
    row = np.full(len(counts), -1, dtype=np.int64)
    row[kept] = np.arange(len(kept))
    pairs = []
    for seq in ids:
        r = row[np.asarray(seq, dtype=np.int64)] if seq else np.empty(0, dtype=np.int64)
        for offset in range(1, window + 1):
            a, b = r[:-offset], r[offset:]
            both = (a >= 0) & (b >= 0)
            pairs.append(np.stack([a[both], b[both]]))
    pairs = torch.from_numpy(np.concatenate(pairs, axis=1))
    pairs = torch.cat([pairs, pairs.flip(0)], dim=1)  # symmetric window
    n = len(kept)
    cooc = torch.sparse_coo_tensor(pairs, torch.ones(pairs.shape[1]), (n, n)).coalesce()
    (i, j), c = cooc.indices(), cooc.values()
    marginal = torch.sparse.sum(cooc, dim=1).to_dense()
    pmi = torch.log(c * c.sum() / (marginal[i] * marginal[j]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(torch.stack([i[keep], j[keep]]), pmi[keep], (n, n)).coalesce()
    with torch.random.fork_rng():  # svd_lowrank's random projection: the same embeddings every run
        torch.manual_seed(0)
        u, singular, _ = torch.svd_lowrank(ppmi, q=min(dim, n - 1), niter=4)
    vectors = torch.nn.functional.normalize(u * singular.sqrt(), dim=1)
    return {int(token): k for k, token in enumerate(kept)}, vectors


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dimension (Martins & Astudillo, 2016): the Euclidean projection
    onto the simplex, which gives most entries exactly zero weight."""
    z, _ = scores.sort(dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumulative = z.cumsum(-1)
    support = (1 + k * z > cumulative).sum(dim=-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return (scores - tau).clamp(min=0)


@torch.no_grad()
def focus_rows(old: torch.Tensor, rows: torch.Tensor, new_vocab: Mapping[str, int], old_vocab: Mapping[str, int],
               new_tokenizer: PreTrainedTokenizerBase, auxiliary: tuple[dict[int, int], torch.Tensor]) -> int:
    """FOCUS (Dobler & de Melo, 2023) for the new pieces that occur in the text behind
    `auxiliary` (`auxiliary_embeddings`): each becomes a sparsemax-weighted mean of the old rows
    of the pieces both vocabularies share, weighted by the similarity of their auxiliary
    embeddings. Writes into `rows` (indexed by new id); returns how many rows it set."""
    index, vectors = auxiliary
    special = set(new_tokenizer.all_special_tokens)
    shared = [(new_id, old_vocab[t]) for t, new_id in new_vocab.items()
              if t in old_vocab and t not in special and new_id in index]
    new = [(t, new_id) for t, new_id in new_vocab.items() if t not in old_vocab and new_id in index]
    if not shared or not new:
        return 0
    shared_vectors = vectors[[index[new_id] for new_id, _ in shared]]
    shared_rows = old[[old_id for _, old_id in shared]]
    for start in range(0, len(new), 1024):
        chunk = new[start : start + 1024]
        weights = sparsemax(vectors[[index[new_id] for _, new_id in chunk]] @ shared_vectors.T)
        rows[[new_id for _, new_id in chunk]] = (weights @ shared_rows.float()).to(rows.dtype)
    return len(new)
