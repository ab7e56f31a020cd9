"""DETR-style transformer head for binary classification (paper section 3.2, models 2-4).

Follows facebookresearch/detr: positions are added to queries and keys in every attention layer
(not once at the input, as ``nn.Transformer`` would), the decoder starts from zeros plus learned
query embeddings, and the encoder uses post-norm layers. With one query the decoder output is one
vector per image, mapped to one logit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.models.spec import DetrHeadSpec


class PositionEmbeddingSine(nn.Module):
    """Fixed 2D sine/cosine positions (DETR's ``PositionEmbeddingSine``); no parameters."""

    def __init__(self, d_model: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = d_model // 2
        self.temperature = temperature

    def forward(self, feat: Tensor) -> Tensor:
        """``feat`` (N, C, H, W) -> positions (N, d_model, H, W)."""
        n, _, h, w = feat.shape
        ones = torch.ones(n, h, w, device=feat.device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        eps, scale = 1e-6, 2 * math.pi
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, device=feat.device, dtype=torch.float32)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack(
            (pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4
        ).flatten(3)
        pos_y = torch.stack(
            (pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4
        ).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(feat.dtype)


class PositionEmbeddingLearned(nn.Module):
    """Learned row and column embeddings (DETR ``PositionEmbeddingLearned``)."""

    def __init__(self, d_model: int, max_positions: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_positions, d_model // 2)
        self.col_embed = nn.Embedding(max_positions, d_model - d_model // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, feat: Tensor) -> Tensor:
        """``feat`` (N, C, H, W) -> positions (N, d_model, H, W); H, W <= max_positions."""
        n, _, h, w = feat.shape
        i = torch.arange(w, device=feat.device)
        j = torch.arange(h, device=feat.device)
        x_emb = self.col_embed(i)  # (W, d/2)
        y_emb = self.row_embed(j)  # (H, d/2)
        pos = torch.cat(
            [x_emb.unsqueeze(0).expand(h, w, -1), y_emb.unsqueeze(1).expand(h, w, -1)], dim=-1
        )
        return pos.permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).to(feat.dtype)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src, need_weights=False)[0]))
        ff = self.linear2(self.dropout(torch.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ff))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout(attn))
        ff = self.linear2(self.dropout(torch.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ff))


class DetrHead(nn.Module):
    """Region activations (N, C, H, W) -> one logit per image (N,).

    ``query_embed`` holds ``num_queries`` learned queries; with more than one, their logits are
    averaged.
    """

    def __init__(self, in_channels: int, spec: DetrHeadSpec) -> None:
        super().__init__()
        d = spec.d_model
        self.input_proj = nn.Conv2d(in_channels, d, kernel_size=1)
        self.pos: nn.Module = (
            PositionEmbeddingSine(d)
            if spec.position == "sine"
            else PositionEmbeddingLearned(d, spec.max_positions)
        )
        args = (d, spec.nhead, spec.dim_feedforward, spec.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(spec.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(spec.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.query_embed = nn.Embedding(spec.num_queries, d)
        self.class_embed = nn.Linear(d, 1)

    def forward(self, feat: Tensor) -> Tensor:
        src = self.input_proj(feat)
        pos = self.pos(src).flatten(2).transpose(1, 2)  # (N, HW, d)
        memory = src.flatten(2).transpose(1, 2)  # (N, HW, d)
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        logits = self.class_embed(self.decoder_norm(tgt)).squeeze(-1)  # (N, Q)
        return logits.mean(dim=1)
