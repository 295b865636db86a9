"""The embedding-training gradient patterns of the row-sparse optimizer
fixtures (Tests/golden/optim_sparse), shared by their generator
(tools/gen_fixtures_optim_sparse.py, which imports this file) and the tests.

Each step's gradient touches `rows` random rows of a (V, D) table and is zero
elsewhere, as an Embedding's dense weight.grad is after a lookup of a batch:

  rowsparse   touched rows standard normal
  multiscale  touched rows standard normal times 10**u, u ~ U(-6, 1) per row
              (rows of one 256-block differ by up to 7 orders of magnitude)
  densescale  every row touched, scaled by 10**u per row (fixed per row)

numpy only: the generator and the tests draw the same arrays."""

import numpy as np

V, D, ROWS, STEPS = 4099, 64, 300, 30  # V * D = 262,336: a short last 256-block

PATTERNS = ("rowsparse", "multiscale", "densescale")

# name: (qembed.optim class, bitsandbytes 32-bit class, 8-bit class, positional args, kwargs)
OPTIMIZERS = {
    "adam": ("Adam", "Adam", "Adam8bit", (), {"lr": 1e-2}),
    "adamw": ("AdamW", "AdamW", "AdamW8bit", (), {"lr": 1e-2}),
    "momentum": ("SGD", "SGD", "SGD8bit", (0.01, 0.9), {}),
    "lion": ("Lion", "Lion", "Lion8bit", (), {"lr": 1e-4}),
    "rmsprop": ("RMSprop", "RMSprop", "RMSprop8bit", (0.01, 0.9), {}),
    "adagrad": ("Adagrad", "Adagrad", "Adagrad8bit", (), {"lr": 1e-2}),
}


def seed_of(pattern):
    return {"rowsparse": 11, "multiscale": 12, "densescale": 13}[pattern]


def initial_table():
    return (np.random.default_rng(7).standard_normal((V, D)) * 0.1).astype(np.float32)


def gradients(pattern):
    """[(ids, rows x D float32 values)] for steps 1..STEPS (ids sorted, distinct)."""
    rng = np.random.default_rng(seed_of(pattern))
    row_scale = 10.0 ** rng.uniform(-6, 1, size=V)
    out = []
    for _ in range(STEPS):
        if pattern == "densescale":
            ids = np.arange(V)
        else:
            ids = np.sort(rng.choice(V, ROWS, replace=False))
        g = rng.standard_normal((len(ids), D))
        if pattern == "multiscale":
            g *= (10.0 ** rng.uniform(-6, 1, size=len(ids)))[:, None]
        elif pattern == "densescale":
            g *= row_scale[:, None]
        out.append((ids, g.astype(np.float32)))
    return out


def dense(ids, values):
    g = np.zeros((V, D), np.float32)
    g[ids] = values
    return g


def sample_positions():
    """Flat positions where the weights are stored: 512 spread over the table."""
    return np.unique(np.random.default_rng(99).choice(V * D, 512, replace=False))


def metrics(w0, w8, w32):
    """The per-step figures the fixtures record and the tests compare."""
    d = (w8.astype(np.float64) - w32)
    return {
        "d_max": float(np.abs(d).max()),
        "d_rms": float(np.sqrt(np.mean(d * d))),
        "move8": float(np.abs(w8.astype(np.float64) - w0).max()),
        "move32": float(np.abs(w32.astype(np.float64) - w0).max()),
    }
