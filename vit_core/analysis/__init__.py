"""Analyses of a ViT: the paper's Figures 6 and 7, the explainers and the what-ifs.

Each function follows its definition in ALGORITHMS.md; every one works for any patch grid,
square or not, and any number of prefix tokens (class, distillation, registers).
"""

from .attention import (
    HEAD_FUSIONS,
    attention_entropy,
    attention_rollout,
    chefer_relevance,
    class_attention_map,
    class_attention_map_from_trace,
    fuse_heads,
    grid_distances,
    head_computation,
    last_layer_heads,
    map_to_image,
    mean_attention_distance,
    rollout_cls_map,
)
from .embeddings import embedding_filters, embedding_filters_pca, embedding_pca_components, position_similarity
from .patches import conv_vs_linear, patch_boxes, patchify, shuffle_image, unpatchify
from .tokens import logit_lens, token_pca, token_pca_rgb
from .whatif import OCCLUSION_MODES, forward_tokens, occlude_image, occlude_patches, shuffle_patches

__all__ = [
    "HEAD_FUSIONS",
    "OCCLUSION_MODES",
    "attention_entropy",
    "attention_rollout",
    "chefer_relevance",
    "class_attention_map",
    "class_attention_map_from_trace",
    "conv_vs_linear",
    "embedding_filters",
    "embedding_filters_pca",
    "embedding_pca_components",
    "forward_tokens",
    "fuse_heads",
    "grid_distances",
    "head_computation",
    "last_layer_heads",
    "logit_lens",
    "map_to_image",
    "mean_attention_distance",
    "occlude_image",
    "occlude_patches",
    "patch_boxes",
    "patchify",
    "position_similarity",
    "rollout_cls_map",
    "shuffle_image",
    "shuffle_patches",
    "token_pca",
    "token_pca_rgb",
    "unpatchify",
]
