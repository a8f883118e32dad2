"""Numbers several modules share, defined once (no torch import: any module may read them).

* :data:`VOID` — the void / ignore label of VOC and COCO masks, crop padding and pseudo labels;
* :data:`LN2` — ``ln 2``, the upper bound of the Jensen–Shannon divergence (natural log);
* :data:`CLIP_MEAN`, :data:`CLIP_STD` — OpenAI CLIP's image statistics on the 0–1 scale
  (open_clip's ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``).
"""

from __future__ import annotations

import math

__all__ = ["CLIP_MEAN", "CLIP_STD", "LN2", "VOID"]

VOID = 255
LN2 = math.log(2.0)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
