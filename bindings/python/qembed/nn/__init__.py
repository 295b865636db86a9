"""qembed.nn: the embedding layers of bitsandbytes.nn (Embedding,
StableEmbedding, Embedding8bit, Embedding4bit, EmbeddingFP4, EmbeddingNF4)
over libqembed, on numpy arrays. See qembed.nn.modules."""

from .modules import (Embedding, Embedding4bit, Embedding8bit, EmbeddingFP4, EmbeddingNF4, LayerNorm, Parameter,
                      SparseGrad, StableEmbedding)

__all__ = ["Embedding", "StableEmbedding", "Embedding8bit", "Embedding4bit", "EmbeddingFP4", "EmbeddingNF4",
           "Parameter", "SparseGrad", "LayerNorm"]
