"""qembed.nn: the embedding layers of bitsandbytes.nn (Embedding,
StableEmbedding, Embedding8bit, Embedding4bit, EmbeddingFP4, EmbeddingNF4)
and torch.nn.EmbeddingBag over libqembed, on numpy arrays, and peft's
LoRA over any of them (LoraEmbedding). See
qembed.nn.modules, qembed.nn.quantized and qembed.nn.embedding_bag. Every table has score()
(logits / nearest rows); quantized tables have bag() (pooled lookups)."""

from .embedding_bag import EmbeddingBag
from .lora import LoraEmbedding
from .modules import (Embedding, Embedding4bit, Embedding8bit, EmbeddingFP4, EmbeddingNF4, LayerNorm, Parameter,
                      SparseGrad, StableEmbedding)

__all__ = ["Embedding", "StableEmbedding", "EmbeddingBag", "Embedding8bit", "Embedding4bit", "EmbeddingFP4",
           "EmbeddingNF4", "LoraEmbedding", "Parameter", "SparseGrad", "LayerNorm"]
