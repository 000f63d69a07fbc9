"""Accuracy-retention curves: every method at matched budgets of the visual tokens (`python -m modeling.eval --curves`).

    python -m modeling.eval --curves --limit 300                       # docs/accuracy/curves.{json,md,png}
    python -m modeling.eval --curves --methods prunevid,random --budgets 0.1,0.5 --out /tmp --limit 20

A budget `b` is a share of the visual tokens; what is measured is the retention each method achieves,
`PruneVidStats.retention` pooled over the questions (kept visual tokens in the KV cache after the prefill, summed,
over the visual tokens of the unpruned inputs, summed; for fewer frames: of the input with every frame). The outputs
report the achieved retention, never the target. How each method meets `b` on a question of `n` visual tokens:

* `prunevid`: the paper's settings, Stage 2's `keep_ratio` (alpha) set per question. A probe runs the vision tower
  and Stage 1 only (the language model is not entered) and reads the sizes `n_g` of Stage 2's groups; alpha is then
  chosen so that the tokens Stage 2 keeps, `sum_g floor(alpha * n_g)` (the paper's rounding, exact since the probe
  sees the groups the run sees), come closest to `b * n`. Where Stage 1 alone keeps fewer than `b * n`, the first
  Stage-1 setting of `PAPER_LADDER` that keeps enough is used instead: `cluster_ratio` 0.5 -> 0.75 -> 1.0, then
  `tau` 1.0 (almost nothing static: a location whose features (nearly) do not change can have a mean cosine that
  rounds to above 1), then Stage 1 off. Each answer's `setting` names the rung (`stage1`), alpha and the count
  planned (`expected`: the tests check that the run keeps exactly that); the markdown counts the rungs chosen.
* `stage2_only`: `PruneVidConfig.paper(enable_stage1=False)`, alpha matched the same way (groups: temporal patches).
* `fastv`: `PruneVidConfig.fastv()` (layer 2, the last token's attention, one global group), alpha matched the same
  way; Stage 3 cuts the cache of layers 0..2 to the same tokens, so its retention is its keep ratio.
* `random`, `evs`: `TokenDrop(name, budget=b)` (`modeling.eval.baselines`): `round(b * n)` tokens before the LLM.
* `uniform_frames`: the even frame count closest to `b * frames` (at least 2); a 16-frame clip cannot go below 2
  frames (12.5%), so at small budgets its achieved retention stays above `b`.
* `prunevid_system_prompt`, `stage2_only_system_prompt`: the negative control, `prunevid` and `stage2_only` with
  Stage 2 scored by the system prompt (`SystemPromptQuery`), matched the same way.
* `stock`: once, every stage off (retention 100%): the reference.

Extension point: `register(MatchedSelection(name, description, PAPER_LADDER, factory))` adds a PruneVid-like method
whose technique is `factory(config)` for each Stage-1 rung's config, with the matched `keep_ratio` set (a
`PruneVidConfig`, or a `PruneVidController` subclass such as a Stage-1 ablation overriding `merge`); it goes through
the same probe and keep-ratio matching as `prunevid`. Other kinds of method implement `Method.plan`. The Stage-1
ablations come in this way: `modeling.eval.ablations.CURVE_VARIANTS = {name: (description, factory)}`, each
registered on import (`register_ablations`), so `--methods` lists them and the default run includes them.

Outputs, in `--out` (default `docs/accuracy`): `curves.json` (per method and budget: target budget, achieved
retention, accuracy, 95% Wilson interval, n, accuracy per kind, every prediction, kept tokens and setting per
question; with the benchmark version, split, items, model, seconds), `curves.md` (methods x budgets, stock on top,
then the details) and `curves.png` (accuracy against achieved retention on a log axis, one line per method with its
95% band, stock dashed, chance dotted).

Speed: a question's inputs are decoded once per frame count and its vision-tower output computed once per frame
count (`reused_vision_features`: every technique here acts after the tower, so the answers are the same), which
makes a question's ~60 runs about three times faster on the CPU; `--workers N` runs N processes.
"""

from __future__ import annotations

import copy
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from ..prunevid.config import PruneVidConfig


__all__ = [
    "BUDGETS",
    "METHODS",
    "PAPER_LADDER",
    "FewerFrames",
    "MatchedSelection",
    "Method",
    "Plan",
    "TokenDropping",
    "Trial",
    "curves_markdown",
    "match_keep_ratio",
    "plot_curves",
    "probe_stage2_groups",
    "register",
    "register_ablations",
    "reused_vision_features",
    "run_curves",
]

BUDGETS = (0.03, 0.06, 0.10, 0.16, 0.25, 0.50)
#: The paper's operating point (PLLaVA kept 16%): the budget the markdown quotes against stock.
OPERATING_POINT = 0.16
#: Stage-1 settings that keep ever more tokens, tried in order until one keeps at least the budget.
PAPER_LADDER = (
    PruneVidConfig.paper(),
    PruneVidConfig.paper(cluster_ratio=0.75),
    PruneVidConfig.paper(cluster_ratio=1.0),
    PruneVidConfig.paper(cluster_ratio=1.0, tau=1.0),
    PruneVidConfig.paper(enable_stage1=False),
)
STOCK = "stock"
#: The method the others are compared with question by question in the markdown (`_paired`).
REFERENCE = "prunevid"


@dataclass(frozen=True)
class Plan:
    """What one question runs at one budget: the technique set on the model, the frames read (None: all), and what
    was chosen (kept in the outcome's `setting`)."""

    technique: Any
    nframes: int | None = None
    setting: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """A curve: `plan` gives, for one question and one budget (a share in (0, 1]), what to run."""

    name: str
    description: str

    def plan(self, trial: Trial, budget: float) -> Plan: ...


@dataclass
class Trial:
    """One question while the methods plan and run it: its inputs (decoded once per frame count) and probes."""

    evaluation: Any  # a `modeling.eval.run.Evaluation`
    item: Any
    _inputs: dict[int | None, dict] = field(default_factory=dict)
    _groups: dict[Any, list[int]] = field(default_factory=dict)

    def inputs(self, nframes: int | None = None) -> dict:
        """The model inputs with `nframes` frames (None: every frame), decoded on first use."""
        if nframes not in self._inputs:
            self._inputs[nframes] = self.evaluation.inputs(self.item, nframes=nframes)
        return self._inputs[nframes]

    @property
    def visual_tokens(self) -> int:
        """Visual tokens of the unpruned input: what a budget is a share of."""
        full = self.inputs()
        return int((full["input_ids"] == self.evaluation.model.config.video_token_id).sum())

    def stage2_groups(self, key: Any, technique: Callable[[], Any]) -> list[int]:
        """Sizes of Stage 2's candidate groups after Stage 1 under `technique()` (Stage 2 on), cached by `key`.

        Runs the vision tower and Stage 1 only: a hook on the language model stops the forward before it starts."""
        if key not in self._groups:
            self._groups[key] = probe_stage2_groups(self.evaluation.model, self.inputs(), technique())
        return self._groups[key]

    def run(self, plan: Plan) -> Any:
        """The answer under `plan`, with the plan's setting."""
        model = self.evaluation.model
        with model.prunevid_override(plan.technique):
            outcome = self.evaluation.answer(self.item, self.inputs(plan.nframes), self.inputs())
        outcome.setting = plan.setting
        return outcome


class _BeforeLanguageModel(Exception):
    """Raised by the probe's hook: the forward got as far as the language model."""


def probe_stage2_groups(model: Any, inputs: dict, technique: Any) -> list[int]:
    """Sizes of the Stage-2 groups (`PrefillState.group`) of a one-row prefill of `inputs` under `technique`."""
    import torch

    def stop(module: Any, args: Any) -> None:
        raise _BeforeLanguageModel

    hook = model.model.language_model.register_forward_pre_hook(stop)
    try:
        with model.prunevid_override(technique) as controller, torch.no_grad():
            try:
                model(**inputs)
            except _BeforeLanguageModel:
                pass
            state = controller.state
    finally:
        hook.remove()
    if state is None:  # nothing to prune (no video)
        return []
    group = state.group[0]
    return torch.bincount(group[group >= 0]).tolist()


def match_keep_ratio(sizes: Sequence[int], target: float) -> tuple[float, int]:
    """The keep ratio alpha in (0, 1] whose Stage-2 quotas `sum floor(alpha * n_g)` come closest to `target` tokens
    (ties: the smaller count), and that count. `grouped_topk`'s arithmetic: float64 with a 1e-9 slack."""
    import numpy as np

    sizes = np.asarray([n for n in sizes if n > 0], dtype=np.float64)
    if sizes.size == 0:
        return 1.0, 0
    alphas = np.unique(np.concatenate([np.arange(1, n + 1) / n for n in sizes.astype(int)]))  # where a quota grows
    counts = np.floor(alphas[:, None] * sizes[None, :] + 1e-9).sum(axis=1)
    best = int(np.argmin(np.abs(counts - target)))  # counts rise with alpha: the first is the smaller count
    return float(alphas[best]), int(counts[best])


def _same(config: PruneVidConfig) -> PruneVidConfig:
    return config


def _rung_label(config: PruneVidConfig) -> str:
    """A Stage-1 setting by what differs from the paper's ("paper", "cluster_ratio=0.75", "no Stage 1")."""
    if not config.enable_stage1:
        return "no Stage 1"
    paper = PruneVidConfig.paper()
    changed = [f"{k}={v}" for k, v in config.to_dict().items() if k != "keep_ratio" and v != getattr(paper, k)]
    return ", ".join(changed) or "paper"


@dataclass(frozen=True)
class MatchedSelection:
    """Stage 2 with its keep ratio matched to the budget per question, after the first Stage-1 setting of `ladder`
    that keeps at least the budget (module docstring). `factory(config)` makes the technique from each setting."""

    name: str
    description: str
    ladder: tuple[PruneVidConfig, ...]
    factory: Callable[[PruneVidConfig], Any] = _same

    def plan(self, trial: Trial, budget: float) -> Plan:
        target = budget * trial.visual_tokens
        for rung, config in enumerate(self.ladder):
            probe = partial(self.factory, config.replace(keep_ratio=1.0))
            sizes = trial.stage2_groups((self.name, rung), probe)
            if sum(sizes) >= target:
                break
        keep_ratio, expected = match_keep_ratio(sizes, target)
        setting = {"stage1": _rung_label(config), "keep_ratio": round(keep_ratio, 6), "expected": expected}
        return Plan(self.factory(config.replace(keep_ratio=keep_ratio)), setting=setting)


@dataclass(frozen=True)
class TokenDropping:
    """`TokenDrop(method, budget=b)`: `round(b * n)` visual tokens kept before the LLM."""

    name: str
    description: str

    def plan(self, trial: Trial, budget: float) -> Plan:
        from .baselines import TokenDrop

        return Plan(TokenDrop(self.name, budget=float(budget), seed=0))


@dataclass(frozen=True)
class FewerFrames:
    """Uniform temporal downsampling: the even frame count closest to `b * frames`, at least 2."""

    name: str = "uniform_frames"
    description: str = "fewer frames (uniform temporal downsampling): the even count closest to the budget's share"

    def plan(self, trial: Trial, budget: float) -> Plan:
        frames = trial.item.frames
        nframes = min(frames, max(2, 2 * round(frames * budget / 2)))
        return Plan(PruneVidConfig.disabled(), nframes=None if nframes == frames else nframes,
                    setting={"nframes": nframes})  # fmt: skip


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to `METHODS` (the curves `--methods` chooses from), replacing one of the same name. Workers
    (`--workers`) look methods up by name in their own `METHODS`: register on the import of this module (as the
    built-in methods and `register_ablations` do), not at run time, for them to see it."""
    if method.name == STOCK:
        raise ValueError(f"{STOCK!r} is the reference, not a method")
    METHODS[method.name] = method
    return method


for _method in (
    MatchedSelection("prunevid", "PruneVid, the paper's settings; Stage 2's keep ratio matched per question (Stage-1 "
                     "ladder where Stage 1 keeps less than the budget)", PAPER_LADDER),
    MatchedSelection("stage2_only", "PruneVid Stage 2 alone (no merging), keep ratio matched per question",
                     (PruneVidConfig.paper(enable_stage1=False),)),
    MatchedSelection("fastv", "FastV: layer 2, the last token's attention, kept share matched per question",
                     (PruneVidConfig.fastv(),)),
    TokenDropping("random", "random token dropping before the LLM (seeded), round(b * n) tokens"),
    TokenDropping("evs", "EVS: drop the tokens least changed from the previous temporal patch, round(b * n) kept"),
    FewerFrames(),
):  # fmt: skip
    register(_method)


def _system_prompt(config: PruneVidConfig) -> Any:
    from .baselines import SystemPromptQuery

    return SystemPromptQuery(config)


for _method in (
    MatchedSelection("prunevid_system_prompt", "negative control: prunevid with Stage 2 scored by the system prompt "
                     "(scored without a causal mask, its rows read the video's keys: a question-blind choice by content)",
                     PAPER_LADDER, _system_prompt),
    MatchedSelection("stage2_only_system_prompt", "negative control: stage2_only scored by the system prompt",
                     (PruneVidConfig.paper(enable_stage1=False),), _system_prompt),
):  # fmt: skip
    register(_method)


def register_ablations() -> list[str]:
    """Registers the Stage-1 ablations of `modeling.eval.ablations` (`CURVE_VARIANTS`: name -> (description,
    factory), the factory making a technique from a `PruneVidConfig`), each as a `MatchedSelection` over
    `PAPER_LADDER`; returns their names. That module must not import this one (imports point one way:
    `tools/layers.py`)."""
    from . import ablations

    for name, (description, factory) in ablations.CURVE_VARIANTS.items():
        register(MatchedSelection(name, description, PAPER_LADDER, factory))
    return list(ablations.CURVE_VARIANTS)


register_ablations()


def parse_methods(text: str | None) -> list[str]:
    """`--methods`: comma-separated names of `METHODS` (None: all). Raises ValueError naming the unknown ones."""
    names = list(METHODS) if text is None else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or 'empty'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def parse_budgets(text: str | None) -> list[float]:
    """`--budgets`: comma-separated shares in (0, 1] (None: `BUDGETS`), sorted. Raises ValueError on a bad one."""
    if text is None:
        return list(BUDGETS)
    budgets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--budgets: {part!r} is not a number (a share in (0, 1], e.g. 0.16)") from None
        if not 0 < value <= 1:
            raise ValueError(f"--budgets: {part} is outside (0, 1] (a share of the visual tokens: 0.16 for 16%)")
        budgets.append(value)
    if not budgets:
        raise ValueError("--budgets: empty")
    return sorted(set(budgets))


# ------------------------------------------------------------------------------------------------ running
def run_curves(methods: Sequence[str], budgets: Sequence[float], evaluation: Any,
               reuse_vision: bool = True) -> dict[tuple, list[Any]]:  # fmt: skip
    """Stock, then every method at every budget, on every item of `evaluation` (a `modeling.eval.run.Evaluation`;
    items the outer loop, each item's inputs decoded once, its vision tower run once per frame count with
    `reuse_vision`): its `Outcome`s per `(method, budget)`, stock under `("stock", 1.0)`. The job of
    `python -m modeling.eval --curves` (in each worker with `--workers`)."""
    from tqdm.auto import tqdm

    keys = [(STOCK, 1.0)] + [(m, b) for m in methods for b in budgets]
    outcomes: dict[tuple, list[Any]] = {key: [] for key in keys}
    for item in tqdm(evaluation.items, desc="questions", disable=not evaluation.progress, file=sys.stderr):
        trial = Trial(evaluation, item)
        with reused_vision_features(evaluation.model, enabled=reuse_vision):
            outcomes[(STOCK, 1.0)].append(trial.run(Plan(PruneVidConfig.disabled())))
            for name in methods:
                for budget in budgets:
                    outcomes[(name, budget)].append(trial.run(METHODS[name].plan(trial, budget)))
    return outcomes


@contextmanager
def reused_vision_features(model: Any, enabled: bool = True) -> Iterator[None]:
    """Inside the block the vision tower runs once per pixel tensor and `vision_attention` setting: a question's
    ~60 prefills (and probes) of the same clip reuse its output, the same tensors, so the answers do not change
    (every technique here changes what happens after the tower). Halves the run time on the CPU."""
    visual = model.model.visual
    tower = visual.forward
    memo: dict[tuple, tuple[Any, Any]] = {}

    def forward(pixels: Any, *args: Any, **kwargs: Any) -> Any:
        key = (pixels.data_ptr(), tuple(pixels.shape), model.prunevid.vision_attention)
        if key not in memo:  # the pixels are kept with the output: their memory is not reused while the block runs
            memo[key] = (pixels, tower(pixels, *args, **kwargs))
        return copy.copy(memo[key][1])  # a fresh output object: `get_video_features` replaces its `pooler_output`

    if enabled:
        visual.forward = forward
    try:
        yield
    finally:
        if enabled:
            del visual.forward


# ------------------------------------------------------------------------------------------------ reporting
def _cell(p: dict[str, Any]) -> str:
    return f"{100 * p['accuracy']:.1f}% at {100 * p['retention']:.1f}%"


def curves_markdown(payload: dict[str, Any]) -> str:
    """Methods x budgets (accuracy at the achieved retention), stock on top; the 16% point against stock; every point
    with its interval, accuracy per kind and the settings chosen; the methods."""
    budgets, stock, curves = payload["budgets"], payload["stock"], payload["curves"]
    title = (
        f"Accuracy-retention curves: {payload['n']} questions of the {payload['split']} split (moving shapes "
        f"v{payload['benchmark_version']}), model {Path(payload['model']).name}, {payload['seconds']:.0f} s on "
        f"{payload['device']} ({payload['workers']} workers). Each cell: accuracy at the achieved retention (visual "
        "tokens in the KV cache / visual tokens of the unpruned input, pooled over the questions)."
    )
    lines = [
        title,
        "",
        "| method | " + " | ".join(f"budget {100 * b:g}%" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
        "| `stock` | " + " | ".join([_cell(stock)] * len(budgets)) + " |",
    ]
    lines += [f"| `{name}` | " + " | ".join(_cell(p) for p in points) + " |" for name, points in curves.items()]
    if OPERATING_POINT in budgets:
        at = [f"`{name}` {_cell(points[budgets.index(OPERATING_POINT)])}" for name, points in curves.items()]
        lines += ["", f"At the paper's operating point (budget 16%), against `stock` {_cell(stock)}: " + "; ".join(at)]
    if REFERENCE in curves and "answers" in payload:
        lines += ["", _paired(payload)]
    lines += ["", _details(payload), "Methods:", "- `stock`: every stage off, the reference"]
    lines += [f"- `{name}`: {text}" for name, text in payload["methods"].items()]
    return "\n".join(lines) + "\n"


def mcnemar_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value of `wins` vs `losses` discordant pairs (a binomial test at 1/2)."""
    n, k = wins + losses, min(wins, losses)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _paired(payload: dict[str, Any]) -> str:
    """Each method against `REFERENCE` on the same questions at the same budget: questions it answers right and the
    reference wrong (+), the reverse (-), and the exact McNemar p-value; what the overlapping intervals cannot say."""
    answers, budgets = payload["answers"], payload["budgets"]
    right = {name: [[p == a for p, a in zip(point["predictions"], answers)] for point in points]
             for name, points in payload["curves"].items()}  # fmt: skip
    lines = [f"Paired against `{REFERENCE}` (same questions, same budget): +right where it is wrong / -the reverse, "
             "exact McNemar p", "", "| method | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]  # fmt: skip
    for name, rows in right.items():
        if name == REFERENCE:
            continue
        cells = []
        for ours, theirs in zip(rows, right[REFERENCE]):
            wins = sum(o and not t for o, t in zip(ours, theirs))
            losses = sum(t and not o for o, t in zip(ours, theirs))
            cells.append(f"+{wins} / -{losses}, p {mcnemar_p(wins, losses):.3f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _details(payload: dict[str, Any]) -> str:
    stock = payload["stock"]
    kinds = sorted(stock["per_kind"])
    columns = ["method", "budget", "retention", "accuracy", "95% interval", "n", *kinds, "chosen (questions)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows = [("stock", stock)] + [(name, p) for name, points in payload["curves"].items() for p in points]
    for name, p in rows:
        lo, hi = p["ci95"]
        per = " | ".join(f"{100 * p['per_kind'].get(k, 0):.1f}" for k in kinds)
        lines.append(f"| `{name}` | {100 * p['budget']:g}% | {100 * p['retention']:.1f}% | {100 * p['accuracy']:.1f}% "
                     f"| {100 * lo:.1f}-{100 * hi:.1f} | {p['n']} | {per} | {_chosen(p)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _chosen(point: dict[str, Any]) -> str:
    """How often each setting was chosen: the Stage-1 setting of a matched method, the frame count of fewer frames."""
    labels = [s.get("stage1") or f"{s.get('nframes')} frames" for s in point["settings"] if s]
    return ", ".join(f"{label}: {n}" for label, n in Counter(labels).most_common())


def plot_curves(payload: dict[str, Any], path: str | Path) -> None:
    """Accuracy (%) against achieved retention (%, log axis), one line per method with its 95% band, each its own
    colour (controls dashed, Stage-1 ablations dash-dotted); stock dashed black, chance dotted, 16% marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(10.5, 5.4), dpi=130)
    stock = payload["stock"]
    ax.axhline(100 * stock["accuracy"], color="black", linestyle="--", linewidth=1.2,
               label=f"stock (100%): {100 * stock['accuracy']:.1f}%")  # fmt: skip
    ax.axhline(100 * payload["chance"], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axvline(100 * OPERATING_POINT, color="grey", linewidth=0.8, alpha=0.5, label="16%: the paper's operating point")
    for index, (name, points) in enumerate(payload["curves"].items()):
        points = sorted(points, key=lambda p: p["retention"])
        x = [100 * p["retention"] for p in points]
        y = [100 * p["accuracy"] for p in points]
        marker = "os^Dv<>PXh"[index % 10]
        style = "--" if name.endswith("_system_prompt") else "-." if name.startswith("stage1_") else "-"
        colour = plt.get_cmap("tab20")((2 * index) % 20 + (index >= 10))  # 20 distinct colours, darker ones first
        (line,) = ax.plot(x, y, marker=marker, markersize=4.5, linewidth=1.6, linestyle=style, label=name, color=colour)
        ax.fill_between(x, [100 * p["ci95"][0] for p in points], [100 * p["ci95"][1] for p in points],
                        color=line.get_color(), alpha=0.1, linewidth=0)  # fmt: skip
    lowest = min([100 * p["retention"] for points in payload["curves"].values() for p in points] + [100.0])
    ticks = sorted({100 * b for b in payload["budgets"]} | {100} | ({1} if lowest < 2 else set()))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(max(0.5, lowest / 1.3), 115)
    floor = min([payload["chance"]] + [p["ci95"][0] for points in payload["curves"].values() for p in points])
    ax.set_ylim(max(0, 10 * int(10 * floor) - 10), 100)
    ax.set_xlabel("retention: visual tokens in the KV cache (% of the unpruned input, log scale)")
    ax.set_ylabel("accuracy (%), band: 95% Wilson interval")
    ax.set_title(f"Moving shapes v{payload['benchmark_version']}, {payload['split']} split, n = {payload['n']}: "
                 "accuracy against retention")  # fmt: skip
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
