"""Fixtures of test_qembedding.c, written by bitsandbytes itself.

Run with the reference environment (bitsandbytes 0.50.2, torch, safetensors):
    /work/refvenv/bin/python bindings/c/tests/data/make_fixtures.py
It (re)writes, next to this script:
    table_64x32.npy              the float32 64 x 32 table (torch seed 1234, N(0, 0.1))
    nf4_nested_bs64.safetensors  F.quantize_4bit(table, blocksize=64, quant_type="nf4",
                                 compress_statistics=True)
    fp4_bs128.safetensors        F.quantize_4bit(table, blocksize=128, quant_type="fp4")
    nf4_nested_bs64_dequant.npy  F.dequantize_4bit(packed, quant_state) of each
    fp4_bs128_dequant.npy
Each .safetensors holds the packed table under "weight" and
QuantState.as_dict(packed=True) under "weight.<key>" (absmax, quant_map,
[nested_absmax, nested_quant_map], quant_state.bitsandbytes__<type>), as
transformers saves a 4-bit layer; written with safetensors.torch.save_file.
"""
import os

import numpy as np
import torch

import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(1234)
table = (torch.randn(64, 32, dtype=torch.float32) * 0.1).contiguous()
np.save(os.path.join(here, "table_64x32.npy"), table.numpy())

for name, quant_type, blocksize, nested in [("nf4_nested_bs64", "nf4", 64, True), ("fp4_bs128", "fp4", 128, False)]:
    packed, state = F.quantize_4bit(table, blocksize=blocksize, quant_type=quant_type, compress_statistics=nested)
    tensors = {"weight": packed.contiguous()}
    for k, v in state.as_dict(packed=True).items():
        tensors["weight." + k] = v.contiguous()
    save_file(tensors, os.path.join(here, name + ".safetensors"),
              metadata={"format": "pt", "generator": "bitsandbytes " + bitsandbytes.__version__})
    deq = F.dequantize_4bit(packed, state)
    assert deq.dtype == torch.float32 and tuple(deq.shape) == (64, 32)
    np.save(os.path.join(here, name + "_dequant.npy"), deq.numpy())
    print(name, {k: (str(v.dtype), tuple(v.shape)) for k, v in tensors.items()},
          "max |deq - table| = %.4g" % (deq - table).abs().max().item())
