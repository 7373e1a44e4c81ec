"""Augmented views as feature banks for the trainer: phone-photo views of catalog photos (NT-Xent between
two views, SimCLR) and paraphrased product texts (text-side augmentation).

The towers are frozen while heads train, so a view is a tower output computed once
(``python -m ml.photo_robustness views``, ``python -m ml.department_holdout paraphrases``) and attached
to the data with :meth:`ml.dataset.TrainData.attach_views`; these banks draw from them with the trainer's
seeded generator. Both are off by default (``TrainConfig.w_view``, ``TrainConfig.p_text_view``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ml.config import TrainConfig
from ml.dataset import TrainData
from ml.heads import RecommenderHeads
from ml.losses import NTXentLoss

if TYPE_CHECKING:
    from ml.towers import TowerTuner  # open_clip; the frozen-feature path never imports it

__all__ = ["PhotoViews", "TextViews"]


class PhotoViews:
    """Each photo that has views: its clean tower features and its K phone-photo views, (M, 1 + K, E); or,
    with a ``tuner`` holding cached prefix activations of views (``ml.tower_prefix``), those photos'
    versions through the tuned tower's top, with gradients.

    Raises:
        ValueError: neither view features are attached to ``data`` nor the tuner holds views.
    """

    def __init__(
        self, data: TrainData, cfg: TrainConfig, device: torch.device, tuner: TowerTuner | None = None
    ) -> None:
        self.cfg, self.device = cfg, device
        self.loss = NTXentLoss(cfg.view_temperature, normalize=cfg.normalize)
        self.tuner = (
            tuner if tuner is not None and tuner.prefix is not None and len(tuner.prefix.view_rows) else None
        )
        if self.tuner is not None:  # views as cached prefix activations, through the tuned tower's top
            rows = self.tuner.prefix.view_rows.numpy()
            self.n_views = 1 + self.tuner.prefix.views.shape[1]
        elif len(data.view_rows):  # views as frozen-tower features
            rows = data.view_rows
            clean = data.image[data.view_rows][:, None, :]  # (M, 1, E)
            self.bank = torch.from_numpy(np.concatenate([clean, data.view_image], axis=1)).float().to(device)
            self.n_views = self.bank.shape[1]
        else:
            raise ValueError(
                "w_view > 0 needs phone-photo view features (TrainData.attach_views) or, when tuning the "
                "image tower from cached activations, tuning_views > 0"
            )
        self.view_of = torch.full((len(data.image),), -1, dtype=torch.int64)  # (N,) bank index, -1: none
        self.view_of[torch.from_numpy(rows)] = torch.arange(len(rows))
        self.rows = torch.from_numpy(rows)  # (M,) bank index -> data row

    def features(self, vi: torch.Tensor, version: torch.Tensor) -> torch.Tensor:
        """(B', E) float32 image-tower outputs of version ``version`` (B',) int64 (0 = clean photo) of the
        view photos ``vi`` (B',) int64: from the feature bank, or through the tuned tower (with gradients)."""
        if self.tuner is not None:
            return self.tuner.view_features(vi, version)
        return self.bank[vi.to(self.device), version.to(self.device)]

    def batch_loss(
        self,
        idx: torch.Tensor,
        heads: RecommenderHeads,
        types: torch.Tensor,
        type_loss: nn.Module,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """NT-Xent (SimCLR, Chen et al. 2020) between two distinct views, drawn with ``gen`` among the
        clean photo and its K phone-photo views, of each batch row of ``idx`` (B,) int64 that has views,
        through the image head (+ ``w_type / w_view`` × ``type_loss`` of both views against ``types`` (N,)
        with ``cfg.view_type_loss``, so that ``w_view`` × this adds it at ``w_type``): a scalar (0 when
        fewer than 2 batch rows have views)."""
        cfg = self.cfg
        vi = self.view_of[idx.cpu()]
        vi = vi[vi >= 0]  # (B',)
        if len(vi) < 2:
            return torch.zeros((), device=self.device)
        n_views = self.n_views
        first = torch.randint(n_views, (len(vi),), generator=gen)
        second = (first + torch.randint(1, n_views, (len(vi),), generator=gen)) % n_views  # != first
        z1 = heads.image_vec(self.features(vi, first))  # (B', E)
        z2 = heads.image_vec(self.features(vi, second))
        loss = self.loss(z1, z2)
        if cfg.view_type_loss and cfg.w_type > 0:  # the views' product types, weighted as w_type
            t = types[self.rows[vi].to(self.device)]
            loss = loss + cfg.w_type / cfg.w_view * (type_loss(z1, t) + type_loss(z2, t)) / 2
        return loss


class TextViews:
    """Each text that has paraphrases: their tower features, (M', P, E).

    Raises:
        ValueError: ``data`` has no paraphrased text features attached.
    """

    def __init__(self, data: TrainData, cfg: TrainConfig, device: torch.device) -> None:
        if not len(data.text_view_rows):
            raise ValueError("p_text_view > 0 needs paraphrased text features (TrainData.attach_views)")
        self.p, self.device = cfg.p_text_view, device
        self.view_of = torch.full((len(data.image),), -1, dtype=torch.int64)  # (N,) bank index, -1: none
        self.view_of[torch.from_numpy(data.text_view_rows)] = torch.arange(len(data.text_view_rows))
        self.bank = torch.from_numpy(data.text_views).float().to(device)

    def swap(self, idx: torch.Tensor, f_txt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, E) text-tower outputs of the batch rows ``idx`` (B,) with each row that has paraphrases
        replaced, with probability ``p_text_view`` (drawn with ``gen``), by one of them drawn uniformly:
        (B, E), a new tensor (``f_txt`` itself when none is swapped)."""
        ti = self.view_of[idx.cpu()]  # (B,)
        swap = (ti >= 0) & (torch.rand(len(ti), generator=gen) < self.p)
        pick = torch.randint(self.bank.shape[1], (len(ti),), generator=gen)
        if not swap.any():
            return f_txt
        out = f_txt.clone()
        rows = swap.nonzero().squeeze(1)  # (S,)
        out[rows.to(out.device)] = self.bank[ti[rows].to(self.device), pick[rows].to(self.device)]
        return out
