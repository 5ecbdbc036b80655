"""Plotly figure builders for the explorer: numpy in, `go.Figure` out, no streamlit."""

from ._base import blend, colorscale_lut, display_scale, mosaic, png_data_uri, upsample
from .attention import entropy_figure, head_steps_figure, heads_figure, mean_distance_figure, token_labels
from .embeddings import conv_linear_figure, filters_figure, token_pca_figure, token_scatter_figure
from .images import crop_figure, image_figure, overlay_figure, patch_grid_figure
from .maps import (
    COLORSCALES,
    compare_maps_figure,
    heads_on_image_figure,
    heat_on_image,
    map_figure,
    patch_boxes_on,
    shared_range,
)
from .patches import patch_animation_figure, patch_matrix_figure, patch_size_figure, patch_size_whatif
from .pipeline import Stage, pipeline_figure
from .positions import similarity_map_figure, similarity_tiles_figure
from .prediction import compare_figure, logit_lens_figure, top_k, topk_figure

__all__ = [
    "COLORSCALES",
    "blend",
    "colorscale_lut",
    "compare_figure",
    "compare_maps_figure",
    "conv_linear_figure",
    "crop_figure",
    "display_scale",
    "entropy_figure",
    "filters_figure",
    "head_steps_figure",
    "heads_figure",
    "heads_on_image_figure",
    "heat_on_image",
    "image_figure",
    "logit_lens_figure",
    "map_figure",
    "mean_distance_figure",
    "mosaic",
    "overlay_figure",
    "patch_animation_figure",
    "patch_boxes_on",
    "patch_grid_figure",
    "patch_matrix_figure",
    "patch_size_figure",
    "patch_size_whatif",
    "pipeline_figure",
    "png_data_uri",
    "shared_range",
    "similarity_map_figure",
    "similarity_tiles_figure",
    "Stage",
    "token_labels",
    "token_pca_figure",
    "token_scatter_figure",
    "top_k",
    "topk_figure",
    "upsample",
]
