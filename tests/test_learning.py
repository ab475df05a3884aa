"""End to end, the pipeline learns: on a random second-order Markov chain, whose entropy is known
exactly, a short CPU run of the real CLI brings the validation loss within MARGIN nats of the best
loss any model can reach.

The best loss over a window of BLOCK tokens is not the entropy rate alone: the first token of a
window has no context and the second only one token, so the floor is
(H(X1) + H(X2 | X1) + (BLOCK - 2) H(X3 | X1, X2)) / BLOCK. A model that used only the previous
token could reach no lower than (H(X1) + (BLOCK - 1) H(X2 | X1)) / BLOCK, well above the margin,
so passing needs attention to two tokens back; ending below the floor would mean it saw the future.
"""

import bisect
import json

import numpy as np
import pytest

from accel_train.training.tracking import read_metrics
from helpers import TINY_MODEL, train

VOCAB, BLOCK = 8, 64
MARGIN = 0.03  # nats above the floor; the run ends about 0.01 above it
NOISE = 0.02  # how far below the floor a validation estimate may land by chance (the val split's own is ~0.006)


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class SecondOrderChain:
    """x[t] ~ next[x[t-2], x[t-1]], each row drawn from a Dirichlet so that some contexts are peaked."""

    def __init__(self, seed: int, alpha: float = 0.5):
        self.next = np.random.default_rng(seed).dirichlet(np.full(VOCAB, alpha), size=(VOCAB, VOCAB))
        pairs = np.zeros((VOCAB * VOCAB, VOCAB * VOCAB))  # (a, b) -> (b, c) with probability next[a, b, c]
        for a in range(VOCAB):
            for b in range(VOCAB):
                pairs[a * VOCAB + b, b * VOCAB:(b + 1) * VOCAB] = self.next[a, b]
        stationary = np.full(VOCAB * VOCAB, 1.0 / VOCAB**2)
        for _ in range(1000):
            stationary = stationary @ pairs
        self.pair_probs = stationary.reshape(VOCAB, VOCAB)  # P(x1 = a, x2 = b) in the stationary chain

    def entropies(self) -> tuple[float, float, float]:
        """H(X1), H(X2 | X1) and the entropy rate H(X3 | X1, X2), in nats."""
        first = self.pair_probs.sum(1)
        h1 = sum(first[a] * entropy(self.pair_probs[a] / first[a]) for a in range(VOCAB))
        rate = sum(self.pair_probs[a, b] * entropy(self.next[a, b]) for a in range(VOCAB) for b in range(VOCAB))
        return entropy(first), h1, rate

    def sample(self, n: int, seed: int) -> np.ndarray:
        cdf = self.next.cumsum(-1).tolist()
        out, (a, b) = np.empty(n, np.uint16), (0, 1)
        for i, u in enumerate(np.random.default_rng(seed).random(n).tolist()):
            c = min(bisect.bisect(cdf[a][b], u), VOCAB - 1)
            out[i], a, b = c, b, c
        return out


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    chain = SecondOrderChain(seed=0)
    data_dir = tmp_path_factory.mktemp("markov")
    chain.sample(200_000, seed=1).tofile(data_dir / "train.bin")
    chain.sample(50_000, seed=2).tofile(data_dir / "val.bin")
    (data_dir / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": VOCAB}))
    out_dir = tmp_path_factory.mktemp("markov_run")
    result = train([*TINY_MODEL, "--model.vocab_size", str(VOCAB), "--data_dir", str(data_dir), "--out_dir",
                    str(out_dir), "--batch_size", "16", "--block_size", str(BLOCK), "--gradient_accumulation_steps",
                    "1", "--max_iters", "300", "--warmup_steps", "20", "--learning_rate", "6e-3", "--min_lr", "3e-4",
                    "--eval_interval", "100", "--eval_iters", "40", "--log_interval", "100", "--checkpoint_interval",
                    "0", "--dtype", "float32", "--device", "cpu", "--plot", "false", "--sample_tokens", "0"],
                   env={"OMP_NUM_THREADS": "1"})  # a tiny model gains nothing from threads that other jobs contend for
    assert result.returncode == 0, result.stderr[-3000:]
    return chain, read_metrics(out_dir)


def test_validation_loss_reaches_the_entropy_of_the_data(chain_run):
    chain, metrics = chain_run
    h0, h1, rate = chain.entropies()
    floor = (h0 + h1 + (BLOCK - 2) * rate) / BLOCK
    first_order_floor = (h0 + (BLOCK - 1) * h1) / BLOCK
    assert floor + MARGIN < first_order_floor - 0.3  # the margin demands the second-order context
    val_losses = [r["val_loss"] for r in metrics if "val_loss" in r]
    assert len(val_losses) == 3 and val_losses[0] > floor + MARGIN  # it started away from the floor ...
    assert floor - NOISE < val_losses[-1] < floor + MARGIN  # ... and ended near it, but not below
