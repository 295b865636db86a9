#!/usr/bin/env python3
"""Generate the LoRA golden fixtures (Tests/golden/lora/) from peft over torch (#19).

Run with the reference venv (torch CPU, peft):

    /work/refvenv/bin/python tools/gen_fixtures_lora.py

Each case builds a torch model holding one nn.Embedding named "embed" (the
base table, `weight`), wraps it with peft (LoraConfig(target_modules=["embed"],
r, lora_alpha, use_rslora)), sets lora_embedding_A and lora_embedding_B to
fresh draws (peft starts A at zeros, which would make every check trivial),
runs one forward on `input` and one backward of `grad_output`, and stores
(as a compressed .npz of numeric arrays):

  weight, A, B          the base table and peft's lora_embedding_A (r x V), lora_embedding_B (D x r)
  input, grad_output    the indices and d loss / d out
  out                   peft's forward
  grad_A, grad_B        A.grad and B.grad (the "sparse" case is run dense: peft fails
                        on a sparse base, torch refusing its transpose of a sparse
                        gradient; qembed's sparse rows must hold these values)
  merged                the table after merge_and_unload()

and, for the first case, the adapter directory peft's save_pretrained wrote
(adapter_model.safetensors + adapter_config.json, under adapter/), so that
qembed is tested loading what peft saves. Values are standard normals times
10**U(-2, 1): no round numbers, three orders of magnitude.

The Python tests (bindings/python/tests/test_lora.py) need numpy alone.
"""

import json
import os
import shutil

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "golden", "lora")

CASES = [
    # name, V, D, r, alpha, rslora, padding_idx, scale_grad_by_freq, sparse, n ids
    ("basic", 300, 24, 8, 16, False, None, False, False, 40),
    ("rslora", 257, 33, 4, 8, True, None, False, False, 37),
    ("padding", 120, 16, 8, 8, False, 3, False, False, 50),
    ("freq", 90, 40, 2, 5, False, None, True, False, 64),
    ("sparse", 500, 20, 8, 16, False, 7, False, True, 45),
    ("rank1", 64, 8, 1, 1, False, None, False, False, 30),
]


def draws(rng, shape):
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 1, size=shape)).astype(np.float32)


class Model(torch.nn.Module):
    def __init__(self, weight, padding_idx, freq, sparse):
        super().__init__()
        V, D = weight.shape
        self.embed = torch.nn.Embedding(V, D, padding_idx=padding_idx, scale_grad_by_freq=freq, sparse=sparse)
        with torch.no_grad():
            self.embed.weight.copy_(torch.from_numpy(weight))


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"generator": "tools/gen_fixtures_lora.py", "torch": torch.__version__,
                "peft": __import__("peft").__version__, "cases": {}}
    for k, (name, V, D, r, alpha, rslora, pad, freq, sparse, n) in enumerate(CASES):
        rng = np.random.default_rng(1000 + k)
        weight = draws(rng, (V, D))
        if pad is not None:
            weight[pad] = 0
        ids = rng.integers(0, V, size=n).astype(np.int64)
        q = n // 4
        ids[:q] = ids[q:2 * q]  # repeated ids
        if pad is not None:
            ids[::9] = pad
        # peft cannot run a sparse base (torch refuses its transpose of A's
        # sparse gradient): the reference is the dense run, whose A.grad
        # holds the same values qembed keeps as sparse rows.
        model = Model(weight, pad, freq, False)
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["embed"]))
        layer = pm.base_model.model.embed
        A = draws(rng, (r, V))
        if pad is not None:
            A[:, pad] = 0
        B = draws(rng, (D, r))
        with torch.no_grad():
            layer.lora_embedding_A["default"].copy_(torch.from_numpy(A))
            layer.lora_embedding_B["default"].copy_(torch.from_numpy(B))
        g = draws(rng, (n, D))
        out = layer(torch.from_numpy(ids))
        out.backward(torch.from_numpy(g))
        ga = layer.lora_embedding_A["default"].grad
        ga = ga.to_dense() if ga.is_sparse else ga
        gb = layer.lora_embedding_B["default"].grad
        if k == 0:
            adir = os.path.join(OUT, "adapter")
            shutil.rmtree(adir, ignore_errors=True)
            pm.save_pretrained(adir)
            for extra in os.listdir(adir):
                if extra not in ("adapter_model.safetensors", "adapter_config.json"):
                    os.remove(os.path.join(adir, extra))
        merged = pm.merge_and_unload().embed.weight.detach().numpy()
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), weight=weight, A=A, B=B, input=ids, grad_output=g,
                            out=out.detach().numpy(), grad_A=ga.numpy(), grad_B=gb.numpy(), merged=merged)
        manifest["cases"][name] = {"V": V, "D": D, "r": r, "lora_alpha": alpha, "use_rslora": rslora,
                                   "padding_idx": pad, "scale_grad_by_freq": freq, "sparse": sparse,
                                   "adapter": "adapter" if k == 0 else None}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
