"""Label and frame masks of CTC batches: the padding id of label rows and the mask of valid frames.

Shared by the data collator, the objectives, the metrics and the decoders (one definition each).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def frame_mask(output_lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(batch, frames)`` bool, True on the first ``output_lengths[b]`` frames of row ``b``."""
    return torch.arange(frames, device=output_lengths.device)[None, :] < output_lengths[:, None]


#: The id that pads label rows (``transformers``' convention; CTC ignores every negative id).
LABEL_PAD_ID = -100


def pad_labels(rows: Sequence[Sequence[int] | torch.Tensor]) -> torch.Tensor:
    """``(batch, max_len)`` long tensor of the label ``rows`` padded with :data:`LABEL_PAD_ID` (at
    least one column, so an all-empty batch still has a shape)."""
    width = max(1, max((len(r) for r in rows), default=0))
    out = torch.full((len(rows), width), LABEL_PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out
