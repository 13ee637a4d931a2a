"""Image-text consistency: products whose picture and text disagree, as a merchandiser's to-do list.

For each product with an image, the trained heads give the similarity of its image to its own
text and the rank of its own text among every product's text for that image. A product is listed
when its own similarity is unusually low for the catalog (z-score) and its own text is not even
among the closest 5% of texts: the photo probably shows another product, or the text another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mmsearch.model.fusion import FusionModel

COLUMNS = ["product_id", "title", "similarity", "own_text_rank", "z_score"]


@torch.inference_mode()
def image_text_mismatches(
    model: FusionModel,
    products: pd.DataFrame,
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    z_threshold: float = -2.0,
    min_rank: int = 10,
    min_rank_share: float = 0.05,
    chunk: int = 1024,
) -> pd.DataFrame:
    """The products whose image and text disagree, lowest similarity first.

    Listed: own similarity z-score below `z_threshold` and own text ranked below both
    `min_rank` and the top `min_rank_share` of the catalog (terse but correct titles rank high).
    """
    rows = np.flatnonzero(has_image)
    if len(rows) < 3:
        return pd.DataFrame(columns=COLUMNS)
    model.eval()
    images = model.image_head(torch.from_numpy(image_features[rows])).numpy()
    texts = model.text_head(torch.from_numpy(text_features[rows])).numpy()
    own = np.einsum("ij,ij->i", images, texts)
    z_scores = (own - own.mean()) / (own.std() or 1.0)
    rank_limit = max(min_rank, int(np.ceil(min_rank_share * len(rows))))
    # Ranking a product's image against every text costs O(n) each; only the few products with
    # an unusually low own similarity can be listed, so only they are ranked.
    candidates = np.flatnonzero(z_scores < z_threshold)
    ranks = np.zeros(len(rows), dtype=int)
    for start in range(0, len(candidates), chunk):
        chosen = candidates[start : start + chunk]
        scores = images[chosen] @ texts.T
        ranks[chosen] = 1 + (scores > own[chosen, None]).sum(axis=1)
    flagged = candidates[ranks[candidates] > rank_limit]
    table = pd.DataFrame(
        {
            "product_id": products["product_id"].to_numpy()[rows[flagged]],
            "title": products["title"].to_numpy()[rows[flagged]],
            "similarity": own[flagged].round(4),
            "own_text_rank": ranks[flagged],
            "z_score": z_scores[flagged].round(3),
        },
        columns=COLUMNS,
    )
    return table.sort_values("similarity").reset_index(drop=True)
