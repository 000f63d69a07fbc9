"""Train the small Qwen2.5-VL of `modeling.demo` on the moving-shapes benchmark (GPU; seeded; resumable).

    python tools/train_demo_model.py --minutes 9 --out OUT [--resume OUT/state.pt | modeling/demo/assets/demo_model.safetensors]

It trains on the benchmark's newest version (`--version`, default 2) and, there, follows each question that names a
shape with the same clip asked about the other moving shapes (`benchmark.siblings`, `--no-siblings` to leave them
out): pairs that only the question tells apart.

Every sample goes through the released input path minus the file: the item's frames (uint8, `modeling.eval.
benchmark.render`) and the chat template go through the real Qwen2.5-VL processor (`modeling.demo.offline.build_processor`,
fps 2 so `second_per_grid_ts` is the evaluation's), with the answer letter and `<|im_end|>` appended; the loss is on
those two tokens, plus an auxiliary perception loss during training only: a linear head on the vision features the
LLM receives predicts each video token's shape colour and motion (`benchmark.token_labels`); the head is discarded,
the shipped model is a plain Qwen2.5-VL. Three more training-only losses bear on the questions that name a shape:
`--referent-weight` (a head on the state after LLM layer 2 at the answer position names the question's referent),
`--attend-weight` (that position's pre-RoPE attention at the pruning layer M falls on the named shape's tokens,
`named_cells`) and `--select-weight` (Stage 2's own score at layer M, `stage2_score`: max over heads and question
rows, puts its share of each frame on the named shape). The last two teach the small model what the paper assumes of
real ones, that the question's tokens attend to what the question is about; docs/accuracy says what each changes.
Frames get a mild per-pixel noise (sigma 2) so that H.264's small errors at evaluation are
nothing new (added on the GPU, in the processor's normalised units). The model is `Qwen2_5_VLPruneVid` with every
stage off (the stock forward); the vision tower's windowed attention runs as one batched call for all windows
(`UniformSegmentAttention`: the same function as upstream's call per window, several times faster).

Embedding rows of tokens the task never uses are zero at initialisation and after every step (tied embeddings: a
zero row is a zero logit), so the shipped asset only needs the task's rows (`modeling.demo.export_asset`).

Writes to OUT: `train.log` (appended), `state.pt` (float32 weights, the training-only heads, step, data cursor:
`--resume` continues the schedule and the data; the optimizer restarts, with 100 steps of learning-rate warm-up), `demo_model.safetensors`
(the compact asset) and `val.json` (validation accuracy per kind).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling.eval import benchmark  # noqa: E402


class UniformSegmentAttention:
    """Training-time vision attention for clips whose attention segments all have one length (224x224 frames: every
    window is 8x8 patches, every frame pair 16x16): one batched `scaled_dot_product_attention` over
    `[segments, heads, length, head_dim]`, the same function as upstream's one call per segment. Plugged in where
    `vision_attention="varlen"` plugs its kernel (the tower's `_prunevid_vision`); segments of unequal length fall back
    to one call per segment."""

    def prepare(self, hidden_states: torch.Tensor, kwargs: dict, *cu_seqlens: torch.Tensor) -> dict:
        lengths = {id(cu): (cu[1:] - cu[:-1]).unique().tolist() for cu in cu_seqlens}
        return {**kwargs, "prunevid_vision": _Attend(self, lengths)}

    def patch_embed(self, module: torch.nn.Module, hidden_states: torch.Tensor) -> None:
        return None  # the stock patch embedding

    @staticmethod
    def _attend(q, k, v, cu, scale, lengths) -> torch.Tensor:
        tokens, heads, dim = q.shape
        found = lengths.get(id(cu)) or (cu[1:] - cu[:-1]).unique().tolist()
        if len(found) == 1:
            n = found[0]
            q, k, v = (t.reshape(tokens // n, n, heads, dim).transpose(1, 2) for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
            return out.transpose(1, 2).reshape(tokens, heads * dim)
        bounds = cu.tolist()
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
            outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=scale)[0].transpose(0, 1))
        return torch.cat(outs).reshape(tokens, heads * dim)


class _Attend:
    """The `prunevid_vision` entry of the block kwargs: the attention call (`UniformSegmentAttention._attend`) and
    `block(blk)`, the block itself (no compiled runner)."""

    def __init__(self, owner: UniformSegmentAttention, lengths: dict) -> None:
        self.owner, self.lengths = owner, lengths

    def __call__(self, q, k, v, cu, scale) -> torch.Tensor:
        return self.owner._attend(q, k, v, cu, scale, self.lengths)

    @staticmethod
    def block(blk: torch.nn.Module) -> torch.nn.Module:
        return blk


#: What a question can name its shape by (`benchmark.referent`): a colour or a direction.
REFERENTS = list(benchmark.COLOURS) + list(benchmark.DIRECTIONS)


class LateTokenDrop:
    """Training-time robustness to pruning after layer M, question-blind: for a `prob` share of the samples, from
    decoder layer `first` on (M + 1, where Stage 2 removes what it did not keep) only a random share of the video
    tokens, log-uniform in [`low`, `high`], stays visible. The dropped tokens are masked as keys of every later layer,
    which is the same as removing them (no later row reads theirs; tests/test_train_demo_model.py checks it against
    the model's own Stage 2 with the same kept set). Which tokens stay is random, never the question's choice, so
    every method of the curves meets the same model: it only stops the small model from needing all 1,024 video
    tokens in its last layers, which large models do not need either (FastV's observation)."""

    def __init__(self, layers, first: int, prob: float, low: float = 0.03, high: float = 0.5) -> None:
        self.prob, self.low, self.high = prob, low, high
        self.allowed: torch.Tensor | None = None  # [B, 1, L, L] bool for the current batch, None: no dropping
        for layer in list(layers)[first:]:
            layer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if self.allowed is None:
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dtype != torch.bool:  # an additive mask (eager attention)
            allowed = torch.zeros(self.allowed.shape, dtype=mask.dtype, device=mask.device)
            kwargs["attention_mask"] = allowed.masked_fill(~self.allowed, torch.finfo(mask.dtype).min)
        else:
            kwargs["attention_mask"] = self.allowed
        return args, kwargs

    def sample(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The dropped tokens `[B, L]` of a batch whose video tokens are `video` `[B, L]`."""
        batch = video.shape[0]
        rand = lambda *shape: torch.rand(*shape, device=video.device, generator=generator)  # noqa: E731
        ratio = torch.exp(math.log(self.low) + rand(batch) * (math.log(self.high) - math.log(self.low)))
        keep = (ratio * video.sum(dim=1)).round().clamp_min(1)
        rank = torch.where(video, rand(video.shape), 2.0).argsort(dim=1).argsort(dim=1)  # random order of the video
        return video & (rank >= keep[:, None]) & (rand(batch) < self.prob)[:, None]

    def set(self, dropped: torch.Tensor | None, valid: torch.Tensor | None = None) -> None:
        """Mask `dropped` `[B, L]` as keys in the later layers of the next forward (causal, `valid` `[B, L]` keys
        only; every row still sees itself); `None`: the stock forward."""
        if dropped is None or not dropped.any():
            self.allowed = None
            return
        length = dropped.shape[1]
        keys = ~dropped if valid is None else valid & ~dropped
        causal = torch.ones(length, length, dtype=torch.bool, device=dropped.device).tril()
        self.allowed = (causal[None] & keys[:, None]) | torch.eye(length, dtype=torch.bool, device=dropped.device)
        self.allowed = self.allowed[:, None]


def named_cells(item: benchmark.Item, cell: int = 28, min_pixels: int = 196) -> np.ndarray:
    """`[frames // 2, SIZE // cell, SIZE // cell]` bool: the LLM video tokens that show the shape a version-2 question
    names (`benchmark.referent`; the named shape is `scenes[0][0]`), by the rule of `benchmark.token_labels` (it covers
    at least `min_pixels` of the cell in frame 2t); all False for the other questions."""
    grid = benchmark.SIZE // cell
    cells = np.zeros((item.frames // 2, grid, grid), dtype=bool)
    if benchmark.referent(item) is None:
        return cells
    for t in range(item.frames // 2):
        cells[t] = benchmark.cell_coverage(item.scenes[0][0], 2 * t, cell) >= min_pixels
    return cells


def build_prompt(processor, question: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def encode(processor, item: benchmark.Item, *, answer: bool, frames: torch.Tensor | None = None) -> dict:
    """One item for training: token ids exactly as the processor makes them (checked by `--check`), the video-token
    type ids, and the uint8 frames `[T, C, H, W]` (`frames`: the item's, already rendered), which `pixels()`
    normalises and patchifies on the device."""
    if frames is None:
        frames = torch.from_numpy(item.frames_array()).permute(0, 3, 1, 2).contiguous()
    grid = (item.frames // 2, benchmark.SIZE // 14, benchmark.SIZE // 14)
    n_video = grid[0] * grid[1] * grid[2] // 4
    text = build_prompt(processor, item.question) + (f"{item.answer}<|im_end|>" if answer else "")
    text = text.replace("<|video_pad|>", "<|video_pad|>" * n_video)
    ids = torch.tensor(processor.tokenizer(text)["input_ids"])
    mm = (ids == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).long() * 2
    colour, motion = benchmark.token_labels(item)
    labels = torch.from_numpy(np.stack([colour.reshape(-1), motion.reshape(-1)], axis=1))  # [video tokens, 2]
    named = benchmark.referent(item)
    attend = torch.zeros(ids.shape[0], dtype=torch.bool)
    attend[mm == 2] = torch.from_numpy(named_cells(item).reshape(-1))
    return {"input_ids": ids, "mm_token_type_ids": mm, "frames": frames, "grid": grid, "labels": labels,
            "referent": REFERENTS.index(named) if named else -100, "attend": attend}


def pixels(processor, frames: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """`pixel_values_videos` of uint8 `[T, C, H, W]` clips: rescale, normalise (the processor's mean and std), then
    the processor's own `patchify`."""
    vp = processor.video_processor
    mean = torch.tensor(vp.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(vp.image_std, device=device).view(1, 3, 1, 1)
    out = []
    for clip in frames:
        video = (clip.to(device, non_blocking=True).float() * (1 / 255.0) - mean) / std
        patches, *_ = vp.patchify(video[None], patch_size=14, merge_size=2, temporal_patch_size=2)
        out.append(patches[0])
    return torch.cat(out)


class TrainStream(torch.utils.data.IterableDataset):
    """Train items `start, start + 1, ...` (each worker takes every `num_workers`-th), encoded with the answer; with
    `siblings`, each item is followed by the same clip asked about its other moving shapes (`benchmark.siblings`):
    pairs where only the question tells the answers apart."""

    def __init__(self, start: int, version: int, siblings: bool = False) -> None:
        self.start, self.version, self.siblings = start, version, siblings

    def __iter__(self):
        from modeling.demo.offline import build_processor

        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        processor = build_processor()
        index = self.start + worker
        while True:
            item = benchmark.make_item("train", index, self.version)
            first = encode(processor, item, answer=True)
            yield index, first
            for sibling in benchmark.siblings(item) if self.siblings else []:
                yield index, encode(processor, sibling, answer=True, frames=first["frames"])
            index += workers


def collate(samples: list) -> dict:
    """Right-pad the token rows (a padded query then still sees its earlier tokens: no fully masked attention row);
    `last` is each row's last real position."""
    encs = [e for _, e in samples]
    width = max(e["input_ids"].shape[0] for e in encs)
    batch: dict = {"indices": [i for i, _ in samples]}
    for key, fill in (("input_ids", 151643), ("mm_token_type_ids", 0), ("attend", False)):
        batch[key] = torch.stack([torch.cat([e[key], e[key].new_full((width - e[key].shape[0],), fill)]) for e in encs])
    lengths = torch.tensor([e["input_ids"].shape[0] for e in encs])
    batch["attention_mask"] = (torch.arange(width)[None] < lengths[:, None]).long()
    batch["last"] = lengths - 1
    batch["frames"] = [e["frames"] for e in encs]
    batch["video_grid_thw"] = torch.tensor([e["grid"] for e in encs])
    batch["second_per_grid_ts"] = torch.full((len(encs),), 2 / benchmark.FPS)
    batch["token_labels"] = torch.cat([e["labels"] for e in encs])
    batch["referent"] = torch.tensor([e["referent"] for e in encs])
    return batch


def model_inputs(processor, batch: dict, device: torch.device) -> dict:
    inputs = {k: batch[k].to(device, non_blocking=True)
              for k in ("input_ids", "mm_token_type_ids", "attention_mask", "video_grid_thw", "second_per_grid_ts")}  # fmt: skip
    inputs["pixel_values_videos"] = pixels(processor, batch["frames"], device)
    return inputs


def _pre_rope_logits(layer: torch.nn.Module, hidden: torch.Tensor, index: torch.Tensor,
                     keys: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The pre-RoPE attention logits of decoder `layer` (input `hidden` `[B, L, C]`) as Stage 2 scores them: the query
    rows `index` `[B, R]` against every key, `-inf` outside `keys` `[B, L]`; float32 `[B, H, R, L]`."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden.float())
    batch, length, width = normed.shape
    query = attn.q_proj(normed.gather(1, index[..., None].expand(-1, -1, width)))
    query = query.view(batch, index.shape[1], -1, attn.head_dim)
    key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim)
    key = key.repeat_interleave(query.shape[2] // key.shape[2], dim=2)  # query head h reads key head h // n_rep
    logits = torch.einsum("brhd,blhd->bhrl", query, key) * attn.scaling
    return logits.masked_fill(~keys[:, None, None], float("-inf"))


def attend_loss(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
    """Attention supervision in Stage 2's own terms (`modeling.integration.controller._score_and_keep`): at decoder
    `layer` (input `hidden` `[B, L, C]`), the pre-RoPE attention of the position `rows` `[B]` (the one that predicts
    the answer) over the `valid` `[B, L]` keys up to it; minus the log of the attention mass that the best head puts
    on the `target` `[B, L]` tokens (the shape the question names), averaged over the rows that have a target."""
    keys = valid & (torch.arange(hidden.shape[1], device=hidden.device)[None] <= rows[:, None])
    log_p = torch.log_softmax(_pre_rope_logits(layer, hidden, rows[:, None], keys)[:, :, 0], dim=-1)  # [B, H, L]
    log_mass = torch.logsumexp(log_p.masked_fill(~(target & keys)[:, None], float("-inf")), dim=-1)  # [B, H]
    has = (target & keys).any(dim=1)
    if not has.any():
        return hidden.new_zeros((), dtype=torch.float32)
    return -log_mass.amax(dim=1)[has].mean()


def stage2_score(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor,
                 video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's score of every token as the paper computes it (`modeling.prunevid.select.attention_importance` with
    max over heads and rows), differentiable: at decoder `layer` (input `hidden` `[B, L, C]`) every question row (the
    tokens after the last `video` token, up to `rows` `[B]`, the position that predicts the answer) attends, pre-RoPE
    and without a causal mask, over the `valid` tokens up to `rows`; a token's score is its largest probability over
    heads and question rows. Returns the score `[B, L]` (float32) and the keys `[B, L]` it is over."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    keys = valid & (positions <= rows[:, None])
    last_video = torch.where(video, positions, -1).amax(dim=1)
    question = keys & (positions > last_video[:, None])
    n_rows = int(question.sum(dim=1).max())
    index = torch.sort(question.to(torch.int8), dim=1, stable=True, descending=True).indices[:, :n_rows]  # [B, R]
    probs = torch.softmax(_pre_rope_logits(layer, hidden, index, keys), dim=-1)
    return probs.amax(dim=1).masked_fill(~question.gather(1, index)[..., None], 0.0).amax(dim=1), keys


def select_loss(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor,
                video: torch.Tensor, target: torch.Tensor, per_frame: int | None = None) -> torch.Tensor:
    """Supervision of Stage 2's selection: minus the log of the share of the video tokens' summed `stage2_score`
    that falls on the `target` tokens `[B, L]` (the shape the question names), averaged over the rows that have a
    target. With `per_frame` (video tokens per temporal patch), the share is taken in each temporal patch that shows
    the target and averaged over those: Stage 2 keeps its quota in each frame's group, so the named shape must lead
    in every frame, not only in the clip's total."""
    score, keys = stage2_score(layer, hidden, rows, valid, video)
    target, video = target & keys, video & keys
    if not target.any():
        return hidden.new_zeros((), dtype=torch.float32)
    if per_frame is None:
        share = (score * target).sum(dim=1) / (score * video).sum(dim=1).clamp_min(1e-12)
        return -torch.log(share.clamp_min(1e-12))[target.any(dim=1)].mean()
    frame = (video.long().cumsum(dim=1) - 1).clamp_min(0) // per_frame  # [B, L]: temporal patch of each video token
    sums = torch.zeros(3, score.shape[0], int(frame.max()) + 1, device=hidden.device)
    for i, part in enumerate((score * target, score * video, target.float())):
        sums[i].scatter_add_(1, frame, part)
    share = sums[0] / sums[1].clamp_min(1e-12)
    return -torch.log(share.clamp_min(1e-12))[sums[2] > 0].mean()


def logits_at(model, inputs: dict, positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` `[B, P]` of each row (the LM head runs on those rows only)."""
    hidden = model.model(**inputs).last_hidden_state
    index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
    return model.lm_head(hidden.gather(1, index))


def task_token_ids(processor) -> list[int]:
    """Every token id a prompt or answer of the task can contain."""
    ids: set[int] = set()
    for question in benchmark.all_questions():
        ids.update(processor.tokenizer(build_prompt(processor, question))["input_ids"])
    for letter in benchmark.LETTERS:
        ids.update(processor.tokenizer(f"{letter}<|im_end|>")["input_ids"])
    tok = processor.tokenizer
    ids.update(tok.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>", "<|endoftext|>", "<|im_end|>"))
    return sorted(ids)


def encode_eval(processor, items, batch_size: int = 32) -> list[tuple[list, dict]]:
    """Validation batches, encoded once (without the answer)."""
    return [(items[i : i + batch_size], collate([(0, encode(processor, it, answer=False)) for it in items[i : i + batch_size]]))
            for i in range(0, len(items), batch_size)]  # fmt: skip


@torch.no_grad()
def evaluate(model, processor, batches, device) -> dict:
    """Teacher-forced accuracy: argmax over the whole vocabulary of the first answer token == the letter."""
    model.eval()
    letters = {l: processor.tokenizer.convert_tokens_to_ids(l) for l in benchmark.LETTERS}
    correct: dict[str, list[int]] = {}
    for chunk, batch in batches:
        logits = logits_at(model, model_inputs(processor, batch, device), batch["last"][:, None])[:, 0].float()
        for it, p in zip(chunk, logits.argmax(-1).tolist()):
            correct.setdefault(it.kind, []).append(int(p == letters[it.answer]))
    model.train()
    out = {k: round(sum(v) / len(v), 4) for k, v in sorted(correct.items())}
    out["all"] = round(sum(sum(v) for v in correct.values()) / sum(len(v) for v in correct.values()), 4)
    return out


def check_inputs(processor, n: int = 6) -> None:
    """The training inputs equal the processor's for the same frames (ids exactly; pixels to float rounding)."""
    for item in benchmark.load_split("val", limit=n, version=2):
        mine = collate([(0, encode(processor, item, answer=False))])
        video = torch.from_numpy(item.frames_array()).permute(0, 3, 1, 2).contiguous()
        meta = {"fps": benchmark.FPS, "total_num_frames": item.frames, "frames_indices": list(range(item.frames))}
        ref = processor(text=[build_prompt(processor, item.question)], videos=[video], video_metadata=[meta],
                        fps=benchmark.FPS, do_sample_frames=False, return_tensors="pt")  # fmt: skip
        for key in ("input_ids", "mm_token_type_ids", "video_grid_thw"):
            assert torch.equal(mine[key], ref[key]), key
        assert torch.allclose(mine["second_per_grid_ts"], torch.as_tensor(ref["second_per_grid_ts"]).float())
        diff = (pixels(processor, mine["frames"], torch.device("cpu")) - ref["pixel_values_videos"]).abs().max().item()
        assert diff < 1e-5, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("--minutes", type=float, default=9.0, help="stop (and save) after this much training time")
    parser.add_argument("--steps", type=int, default=6000, help="length of the learning-rate schedule")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-token perception loss")
    parser.add_argument("--version", type=int, choices=benchmark.VERSIONS, default=max(benchmark.VERSIONS),
                        help="of the moving-shapes benchmark to train and validate on")
    parser.add_argument("--siblings", action=argparse.BooleanOptionalAction, default=True,
                        help="follow each question that names a shape by the same clip asked about the other movers")
    parser.add_argument("--referent-weight", type=float, default=1.0,
                        help="weight of the loss that names, at the answer position, what the question names")
    parser.add_argument("--referent-layer", type=int, default=2, help="LLM layer whose output that loss reads")
    parser.add_argument("--attend-weight", type=float, default=0.0,
                        help="weight of the loss that the answer position's pre-RoPE attention at --attend-layer "
                             "falls on the named shape (Stage 2's scoring)")
    parser.add_argument("--attend-layer", type=int, help="default: the demo model's pruning layer M")
    parser.add_argument("--select-weight", type=float, default=0.0,
                        help="weight of the loss that Stage 2's score at --attend-layer (max over heads and question "
                             "rows) falls on the named shape")
    parser.add_argument("--select-groups", choices=("frame", "clip"), default="frame",
                        help="that share per temporal patch (Stage 2's groups) or over the whole clip")
    parser.add_argument("--drop-prob", type=float, default=0.0,
                        help="share of the samples whose later layers (after M) see only a random share of the video "
                             "tokens (LateTokenDrop)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (default: float32 with TF32 matmuls)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
    from modeling.demo import EMBED_KEY, demo_config, export_asset
    from modeling.demo.offline import build_processor

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train.log", "a")

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    torch.manual_seed(args.seed)
    torch.set_num_threads(4)  # the data workers need the other cores
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    processor = build_processor()
    model = Qwen2_5_VLPruneVid(demo_config(), prunevid=PruneVidConfig.disabled())
    model.model.visual._prunevid_vision = UniformSegmentAttention()
    model.to(device).train()
    # Auxiliary perception loss (training only; the head is not part of the model): from the vision features the
    # LLM receives, predict each token's shape colour and motion (`benchmark.token_labels`).
    aux_head = torch.nn.Linear(model.config.text_config.hidden_size, len(benchmark.COLOURS) + 1 + 5).to(device)
    captured: dict = {}
    model.model.visual.register_forward_hook(lambda mod, inp, out: captured.__setitem__("features", out.pooler_output))
    # Auxiliary referent loss (training only): from the hidden state after LLM layer `referent_layer` at the position
    # that predicts the answer, name what the question names (`benchmark.referent`: a colour or a direction).
    # The head reads the RMS-normalised state (the residual stream's scale is large: a plain linear head starts at a
    # loss of ~13 whose gradient would crowd the answer's out of the clipped norm).
    width = model.config.text_config.hidden_size
    referent_head = torch.nn.Sequential(torch.nn.RMSNorm(width, elementwise_affine=False),
                                        torch.nn.Linear(width, len(REFERENTS))).to(device)  # fmt: skip
    layer = model.model.language_model.layers[args.referent_layer]
    layer.register_forward_hook(lambda mod, inp, out: captured.__setitem__("hidden", out[0] if isinstance(out, tuple) else out))
    if args.attend_layer is None:
        args.attend_layer = PruneVidConfig().resolve_pruning_layer(model.config.text_config.num_hidden_layers)
    attend_layer = model.model.language_model.layers[args.attend_layer]
    attend_layer.register_forward_pre_hook(
        lambda mod, a, kw: captured.__setitem__("attend_in", kw["hidden_states"] if "hidden_states" in kw else a[0]),
        with_kwargs=True)  # fmt: skip
    drop = LateTokenDrop(model.model.language_model.layers, args.attend_layer + 1, args.drop_prob)
    check_inputs(processor)
    used = torch.tensor(task_token_ids(processor), device=device)
    embed = model.get_input_embeddings().weight
    unused = torch.ones(embed.shape[0], dtype=torch.bool, device=device)
    unused[used] = False
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    decay += [aux_head.weight, referent_head[1].weight]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n] + [aux_head.bias, referent_head[1].bias]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    step, cursor = 0, 0
    if args.resume is not None and args.resume.suffix == ".safetensors":  # the shipped asset: weights and step
        from modeling.demo import load_asset

        weights, metadata = load_asset(args.resume)
        ids = (weights[EMBED_KEY].abs().sum(-1) > 0).nonzero().flatten()
        weights["embed_rows"] = weights[EMBED_KEY][ids]
        state = {"weights": {k: v for k, v in weights.items() if k not in (EMBED_KEY, "lm_head.weight")},
                 "embed_ids": ids, "step": int(metadata.get("step", 0)),
                 "cursor": int(metadata.get("cursor", 10**6))}  # fmt: skip
    elif args.resume is not None:  # weights, step and data cursor; the optimizer restarts with a short warm-up
        state = torch.load(args.resume, map_location=device, weights_only=True)
    if args.resume is not None:
        weights = state["weights"]
        rows = weights.pop("embed_rows")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert set(missing) <= {EMBED_KEY, "lm_head.weight"} and not unexpected, (missing, unexpected)
        with torch.no_grad():
            embed[state["embed_ids"].to(device)] = rows.to(device)
        step, cursor = int(state["step"]), int(state["cursor"])
        for name, head in (("aux_head", aux_head), ("referent_head", referent_head)):
            if name in state.get("heads", {}):  # the training-only heads, where the checkpoint has them
                head.load_state_dict(state["heads"][name])
        log(f"resumed from {args.resume}: step {step}, data cursor {cursor}")
    resumed_at = step
    with torch.no_grad():
        embed[unused] = 0.0
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, non-embedding parameters {n_params:,}, task tokens {len(used)}, args {vars(args)}")  # fmt: skip

    def lr_at(s: int) -> float:
        warm = (s - resumed_at + 1) / 100 if resumed_at else 1.0  # after a resume: 100 steps back to the schedule
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        return min(1.0, warm) * _cosine(s)

    def _cosine(s: int) -> float:
        progress = min(1.0, (s - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    per_frame = (benchmark.SIZE // 28) ** 2 if args.select_groups == "frame" else None  # video tokens per patch
    noise_std = torch.tensor(processor.video_processor.image_std, device=device, dtype=torch.float32)
    loader = torch.utils.data.DataLoader(
        TrainStream(cursor, args.version, args.siblings), batch_size=args.batch, collate_fn=collate, num_workers=args.workers,
        prefetch_factor=4 if args.workers else None, persistent_workers=bool(args.workers), pin_memory=device.type == "cuda",
    )  # fmt: skip
    val_batches = encode_eval(processor, benchmark.load_split("val", limit=args.val, version=args.version))
    start = time.time()
    losses: list[float] = []
    aux_losses: list[float] = []
    ref_losses: list[float] = []
    att_losses: list[float] = []
    sel_losses: list[float] = []
    wait = 0.0
    skipped = 0
    tick = time.time()
    for batch in loader:
        wait += time.time() - tick
        cursor = max(batch["indices"]) + 1
        inputs = model_inputs(processor, batch, device)
        ids = inputs["input_ids"]
        if args.noise:  # per-pixel noise of sigma `noise` grey levels, in the processor's normalised units
            pixels_ = inputs["pixel_values_videos"]
            scale = (args.noise / 255.0) / noise_std.repeat_interleave(pixels_.shape[1] // 3)
            inputs["pixel_values_videos"] = pixels_ + torch.randn_like(pixels_) * scale
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        last = batch["last"].to(device)
        positions = torch.stack([last - 2, last - 1], dim=1)  # they predict the letter and <|im_end|>
        targets = ids.gather(1, torch.stack([last - 1, last], dim=1))
        valid, video = inputs["attention_mask"].bool(), ids == model.config.video_token_id
        if args.drop_prob:
            drop.set(drop.sample(video), valid)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = logits_at(model, inputs, positions).float()
        drop.set(None)
        answer_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        aux = aux_head(captured.pop("features").float())
        labels = batch["token_labels"].to(device)
        n_colour = len(benchmark.COLOURS) + 1
        aux_loss = torch.nn.functional.cross_entropy(aux[:, :n_colour], labels[:, 0]) + torch.nn.functional.cross_entropy(aux[:, n_colour:], labels[:, 1])
        hidden = captured.pop("hidden")
        named = hidden[torch.arange(hidden.shape[0], device=device), last - 2].float()  # predicts the letter
        referent = batch["referent"].to(device)
        ref_loss = (torch.nn.functional.cross_entropy(referent_head(named), referent, ignore_index=-100)
                    if (referent >= 0).any() else hidden.new_zeros(()))  # fmt: skip
        attend_in = captured.pop("attend_in")
        attend = batch["attend"].to(device)
        att_loss = (attend_loss(attend_layer, attend_in, last - 2, valid, attend) if args.attend_weight
                    else hidden.new_zeros(()))  # fmt: skip
        sel_loss = (select_loss(attend_layer, attend_in, last - 2, valid, video, attend, per_frame=per_frame)
                    if args.select_weight else hidden.new_zeros(()))  # fmt: skip
        loss = answer_loss + args.aux_weight * aux_loss + args.referent_weight * ref_loss + args.attend_weight * att_loss
        loss = loss + args.select_weight * sel_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        heads = list(aux_head.parameters()) + list(referent_head.parameters())
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + heads, 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):  # never let one bad batch poison the weights
            bad = [n for n, q in model.named_parameters() if q.grad is not None and not q.grad.isfinite().all()]
            skipped += 1
            log(f"step {step}: non-finite loss {loss.item()} / grad norm {norm.item()} (grads: {bad[:4]}); skipped")
            if skipped > 50:
                raise RuntimeError("more than 50 non-finite steps: stopping")
            tick = time.time()
            continue
        optimizer.step()
        with torch.no_grad():
            embed[unused] = 0.0
        step += 1
        losses.append(answer_loss.item())
        aux_losses.append(aux_loss.item())
        ref_losses.append(ref_loss.item())
        att_losses.append(att_loss.item())
        sel_losses.append(sel_loss.item())
        if step - resumed_at <= 10 or step % 50 == 0:
            log(f"step {step} loss {np.mean(losses[-50:]):.4f} aux {np.mean(aux_losses[-50:]):.4f} referent {np.mean(ref_losses[-50:]):.4f} "
                f"attend {np.mean(att_losses[-50:]):.4f} select {np.mean(sel_losses[-50:]):.4f} lr {lr_at(step):.2e} "
                f"{(time.time() - start) / 60:.1f} min, data wait {wait:.0f} s")  # fmt: skip
        done = (time.time() - start) / 60 >= args.minutes or step >= args.steps
        if step % args.eval_every == 0 or done:
            acc = evaluate(model, processor, val_batches, device)
            log(f"step {step} val accuracy {json.dumps(acc)}")
        if done:
            break
        tick = time.time()

    state = {k: v for k, v in model.state_dict().items()}
    compact = {k: v.float().cpu() for k, v in state.items() if k not in (EMBED_KEY, "lm_head.weight")}
    compact["embed_rows"] = state[EMBED_KEY][used].float().cpu()
    heads = {"aux_head": aux_head.state_dict(), "referent_head": referent_head.state_dict()}
    torch.save({"weights": compact, "embed_ids": used.cpu(), "step": step, "cursor": cursor, "heads": heads},
               args.out / "state.pt")  # fmt: skip
    export_asset(state, used.tolist(), args.out / "demo_model.safetensors",
                 metadata={"step": str(step), "cursor": str(cursor), "val_accuracy": f"{acc['all']:.4f}",
                           "seed": str(args.seed)})  # fmt: skip
    (args.out / "val.json").write_text(json.dumps({"step": step, "val": acc}, indent=2) + "\n")
    log(f"saved step {step} to {args.out}")


if __name__ == "__main__":
    main()
