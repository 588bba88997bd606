"""A PyTorch model of the original AuM forward pass, written from its semantics for these tests.

It works on a PyTorch ``state_dict`` and follows the original's data layout and order of
operations: (B, D, L) mixer tensors, a sequential float32 scan, the cls token concatenated into
the patch sequence and its position entry moved to the front and back around the addition, the
first block taking ``residual = hidden``, and the fused add + RMSNorm. It lets the tests check
options the golden fixtures do not cover (Fo-Fo, cls placements, pooling, transposed token order,
overlapping strides) against an implementation in another framework and layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aum_jax.models import AuMConfig


def _scan(u, delta, A, B, C, D, z, delta_bias):
    """u, delta, z (B, D, L); B, C (B, N, L); A (D, N) -> (B, D, L)."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def _branch(sd, p, x, z, rank, n, a_key, d_key, suffix=""):
    """x: conv output (B, D, L)."""
    x_dbl = torch.einsum("bdl,ed->ble", x, sd[f"{p}x_proj{suffix}.weight"])
    dt, b, c = torch.split(x_dbl, [rank, n, n], dim=-1)
    delta = torch.einsum("blr,dr->bdl", dt, sd[f"{p}dt_proj{suffix}.weight"])
    A = -torch.exp(sd[f"{p}{a_key}"])
    return _scan(x, delta, A, b.transpose(1, 2), c.transpose(1, 2), sd[f"{p}{d_key}"], z, sd[f"{p}dt_proj{suffix}.bias"])


def _conv(sd, p, x, suffix=""):
    w = sd[f"{p}conv1d{suffix}.weight"]
    L = x.shape[-1]
    return F.silu(F.conv1d(x, w, sd.get(f"{p}conv1d{suffix}.bias"), padding=w.shape[-1] - 1, groups=w.shape[0])[..., :L])


def mixer(sd, p, hidden, cfg: AuMConfig):
    """hidden (B, L, D) -> (B, L, D)."""
    rank, n = cfg.resolved_dt_rank, cfg.d_state
    xz = torch.einsum("bld,ed->bel", hidden, sd[f"{p}in_proj.weight"])
    if f"{p}in_proj.bias" in sd:
        xz = xz + sd[f"{p}in_proj.bias"][:, None]
    x, z = xz.chunk(2, dim=1)
    xc = _conv(sd, p, x)
    y = _branch(sd, p, xc, z, rank, n, "A_log", "D")
    if cfg.bimamba_type == "v1":
        y_b = _branch(sd, p, xc.flip(-1), z.flip(-1), rank, n, "A_b_log", "D")
        y = y + y_b.flip(-1)
    elif cfg.bimamba_type == "v2":
        xb, zb = xz.flip(-1).chunk(2, dim=1)
        y_b = _branch(sd, p, _conv(sd, p, xb, "_b"), zb, rank, n, "A_b_log", "D_b", "_b")
        y = (y + y_b.flip(-1)) / (2 if cfg.if_devide_out else 1)
    out = torch.einsum("bdl,ed->ble", y, sd[f"{p}out_proj.weight"])
    return out + sd[f"{p}out_proj.bias"] if f"{p}out_proj.bias" in sd else out


def _rms(x, w, eps):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * w


def _to_front(x, positions):
    for i, src in enumerate(positions):
        x = torch.cat([x[:, :i], x[:, src : src + 1], x[:, i:src], x[:, src + 1 :]], dim=1)
    return x


def _from_front(x, positions):
    prefix, x = x[:, : len(positions)], x[:, len(positions) :]
    for i, dst in enumerate(positions):
        x = torch.cat([x[:, :dst], prefix[:, i : i + 1], x[:, dst:]], dim=1)
    return x


@torch.no_grad()
def forward(sd: dict[str, torch.Tensor], cfg: AuMConfig, x: torch.Tensor, return_features: bool = False):
    """x (B, T, F) -> logits (B, K) or features (B, D), in eval mode."""
    x = x.unsqueeze(1).transpose(2, 3)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.strides)
    batch, dim, f_grid, t_grid = x.shape
    x = x.flatten(2).transpose(1, 2)
    n = x.shape[1]
    if cfg.cls_position == "double":
        positions = [0, n + 1]
        x = torch.cat([sd["cls_token_head"].expand(batch, -1, -1), x, sd["cls_token_tail"].expand(batch, -1, -1)], 1)
    elif cfg.cls_position == "none":
        positions = []
    else:
        at = {"middle": n // 2, "head": 0, "end": n}[cfg.cls_position]
        positions = [at]
        x = torch.cat([x[:, :at], sd["cls_token"].expand(batch, -1, -1), x[:, at:]], dim=1)
    x = _from_front(_to_front(x, positions) + sd["pos_embed.pos_embed"], positions)
    if cfg.transpose_token_sequence:
        cls = [x[:, p : p + 1] for p in positions]
        keep = [i for i in range(x.shape[1]) if i not in positions]
        patches = x[:, keep].reshape(batch, f_grid, t_grid, dim).transpose(1, 2).reshape(batch, -1, dim)
        if cfg.cls_position == "double":
            x = torch.cat([cls[0], patches, cls[1]], dim=1)
        elif positions:
            x = torch.cat([patches[:, : positions[0]], cls[0], patches[:, positions[0] :]], dim=1)
        else:
            x = patches
    residual, hidden = None, x
    for i in range(cfg.depth):
        p = f"layers.{i}."
        residual = hidden if residual is None else residual + hidden
        hidden = mixer(sd, f"{p}mixer.", _rms(residual, sd[f"{p}norm.weight"], cfg.norm_epsilon), cfg)
    hidden = _rms(residual + hidden, sd["norm_f.weight"], cfg.norm_epsilon)
    if positions:
        feats = sum(hidden[:, p] for p in positions) / len(positions)
    elif cfg.pool == "mean":
        feats = hidden.mean(1)
    elif cfg.pool == "last":
        feats = hidden[:, -1]
    else:
        feats = hidden
    if return_features:
        return feats
    logits = F.linear(feats, sd["head.weight"], sd["head.bias"])
    return logits.max(dim=1)[0] if feats.ndim == 3 else logits
