"""A curriculum: :func:`~icc_utils.finetune.training.train` run once per :class:`CurriculumStage` (notebook 04's
``ft_curriculum``), each stage starting from the previous stage's adapter, under one time budget.

Stage ``k`` of ``n`` (1-based) trains into ``<output_dir>_stages/<k>-<name>`` for ``k < n`` and into
``output_dir`` itself for the last (:func:`stage_dirs`), so that a curriculum's result sits where a
single run's would.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

from ..data import DEFAULT_LENGTH_RANGE, TRAIN_DFS, Episode
from ..validation import check_choice, check_int, check_length_range, check_numbers
from .config import FinetuneConfig
from .evaluation import kmeans_reference
from .training import TrainResult, _check_eval_every_steps, planned_steps, train


@dataclass(frozen=True)
class CurriculumStage:
    """One stage of a curriculum: ``n_episodes`` training episodes of one setting (c, d), with ``points``
    = [lo, hi] points each and t noise drawn from ``dfs``; ``separated``: only well-separated episodes
    (:func:`icc_utils.data.one_setting_training_set`). Stages run in order, each starting from the
    previous stage's adapter with a fresh optimiser and schedule (:func:`train_curriculum`)."""

    name: str
    n_clusters: int
    dim: int
    n_episodes: int
    points: tuple = DEFAULT_LENGTH_RANGE
    dfs: tuple = TRAIN_DFS
    separated: bool = False

    @classmethod
    def from_dict(cls, d, where: str = "stage") -> "CurriculumStage":
        """A stage from a mapping (a profile's ``ft_curriculum`` item); a ValueError names ``where`` and the key."""
        from ..data import normalise_distribution

        if not isinstance(d, dict):
            raise ValueError(f"{where}={d!r} must be a mapping with keys {list(STAGE_KEYS)}")
        unknown = sorted(set(d) - set(STAGE_KEYS))
        missing = [k for k, v in STAGE_KEYS.items() if v is None and k not in d]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}; a stage has the keys "
                             f"{list(STAGE_KEYS)} (required: {[k for k, v in STAGE_KEYS.items() if v is None]})")
        d = {**{k: v for k, v in STAGE_KEYS.items() if v is not None}, **d}
        name = d["name"]
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ValueError(f"{where}.name={name!r} is not allowed; it must be a non-empty folder name "
                             "(letters, digits, '-', '_', '.')")
        c = check_int(f"{where}.n_clusters", d["n_clusters"], 2, 10)
        lo, hi = check_length_range(f"{where}.points", d["points"])
        if lo < c:
            raise ValueError(f"{where}.points={d['points']!r} is not allowed; every episode needs at least "
                             f"n_clusters={c} points (no empty cluster)")
        dfs = check_numbers(f"{where}.dfs", d["dfs"], lo=0.01)
        if not dfs:
            raise ValueError(f"{where}.dfs=[] is not allowed; give at least one df")
        for df in dfs:
            normalise_distribution("t", df)
        return cls(name=name, n_clusters=c, dim=check_int(f"{where}.dim", d["dim"], 1, 16),
                   n_episodes=check_int(f"{where}.n_episodes", d["n_episodes"], 1), points=(lo, hi),
                   dfs=tuple(dfs), separated=check_choice(f"{where}.separated", d["separated"], [True, False]))

    def episodes(self, seed: int) -> list[Episode]:
        """The stage's training episodes (``train`` seed split, root ``seed``)."""
        from ..data import one_setting_training_set

        return one_setting_training_set(self.n_episodes, seed, self.n_clusters, self.dim, dfs=self.dfs,
                                        length_range=self.points, separated=self.separated)


#: Keys of one curriculum stage (notebook 04's ``ft_curriculum`` items) and their defaults (None: required).
STAGE_KEYS = {f.name: None if f.default is MISSING else f.default for f in fields(CurriculumStage)}


def curriculum_from_params(stages: Sequence, name: str = "ft_curriculum") -> list[CurriculumStage]:
    """The stages of notebook 04's ``ft_curriculum`` (a list of mappings; ``[]``: no curriculum), checked."""
    if isinstance(stages, (str, bytes, dict)) or not isinstance(stages, (list, tuple)):
        raise ValueError(f"{name}={stages!r} must be a list of stages (mappings with keys {list(STAGE_KEYS)}), "
                         "or [] for no curriculum")
    out = [CurriculumStage.from_dict(s, f"{name}[{i}]") for i, s in enumerate(stages)]
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise ValueError(f"{name}: stage names {names} must be distinct (each stage has its own folder)")
    return out


def stage_dirs(stages: Sequence[CurriculumStage], output_dir: str | Path, first_stage: int = 1) -> list[Path]:
    """Where each stage's adapter goes: ``<output_dir>_stages/<k>-<name>`` for the earlier stages and
    ``output_dir`` itself for the last, so that the curriculum's result sits where a single run's would.
    ``first_stage``: the curriculum number of ``stages[0]`` (a curriculum continued from stage K keeps its numbers)."""
    output_dir = Path(output_dir)
    return [output_dir.with_name(f"{output_dir.name}_stages") / f"{k}-{s.name}"
            for k, s in enumerate(stages[:-1], first_stage)] + [output_dir]


def train_curriculum(config: FinetuneConfig, stages: Sequence[CurriculumStage], output_dir: str | Path,
                     on_eval: Callable | None = None, eval_every_steps: int | None = None,
                     stage_episodes: Sequence[Sequence[Episode]] | None = None,
                     init_adapter: str | Path | None = None,
                     trainers: Sequence[Callable] | None = None, first_stage: int = 1) -> TrainResult:
    """Train the stages in order with :func:`train`, each from the previous stage's adapter (``init_adapter``
    starts the first one: a curriculum continued from a published stage).

    ``config.max_train_seconds`` is the budget of the whole curriculum: a stage gets what the earlier stages
    left, and a stage that runs out stops cleanly (``finished=False``), as do the stages after it; call again to
    continue (finished stages are reused, the stopped one resumes from its checkpoint). ``on_eval`` is called as
    in :func:`train` every ``eval_every_steps`` steps of each stage, at each stage's last step, and at step 0 of
    the first stage only (a later stage's step 0 is the previous stage's end); ``episodes_seen`` counts the
    episodes of the earlier stages too. ``stage_episodes`` (default: each stage's :meth:`~CurriculumStage.episodes`
    at ``config.seed``) are the training sets. ``trainers`` (default: :func:`train` for every stage) train
    one stage each, called as :func:`train` is (another model's training, e.g. the image curriculum's
    :func:`icc_utils.vision.curriculum.train_image_curriculum`). Returns the totals, with each stage's
    :class:`TrainResult` in ``stages``. ``first_stage``: the curriculum number of ``stages[0]`` in the folder names
    (:func:`stage_dirs`).
    """
    stages = list(stages)
    if not stages:
        raise ValueError("stages is empty; give at least one CurriculumStage (or call train() for one run)")
    if stage_episodes is None:
        stage_episodes = [s.episodes(config.seed) for s in stages]
    if len(stage_episodes) != len(stages):
        raise ValueError(f"stage_episodes has {len(stage_episodes)} training sets for {len(stages)} stages")
    trainers = [train] * len(stages) if trainers is None else list(trainers)
    if len(trainers) != len(stages):
        raise ValueError(f"trainers has {len(trainers)} entries for {len(stages)} stages; give one per stage")
    _check_eval_every_steps(eval_every_steps)
    results, before, spent, init = [], 0, 0.0, init_adapter
    for k, (stage, episodes, out, train_stage) in enumerate(zip(stages, stage_episodes, stage_dirs(stages, output_dir,
                                                                                               first_stage), trainers)):
        budget = config.max_train_seconds
        if budget is not None and budget - spent <= 0:   # nothing left: the later stages do not start
            break
        last_step = planned_steps(config, len(episodes) * config.n_permutations)

        def stage_eval(model, tokenizer, step, seen, k=k, before=before, last_step=last_step, name=stage.name):
            due = (step == 0 and k == 0) or (step > 0 and (step % eval_every_steps == 0 or step >= last_step))
            if not due:
                return None
            row = on_eval(model, tokenizer, step, before + seen)
            return None if row is None else {**row, "episodes_seen": before + seen, "stage": name}

        cfg = replace(config, max_train_seconds=None if budget is None else budget - spent)
        run = train_stage(cfg, episodes, out, on_eval=stage_eval if on_eval and eval_every_steps else None,
                    eval_every_steps=1 if on_eval and eval_every_steps else None, init_adapter=init)
        results.append(run)
        before, spent, init = before + run.episodes_seen, spent + run.train_seconds, out
        if not run.finished:
            break
    last = results[-1]
    finished = len(results) == len(stages) and last.finished
    max_steps = sum(r.max_steps for r in results) + sum(
        planned_steps(config, len(eps) * config.n_permutations) for eps in stage_episodes[len(results):])
    return TrainResult(last.output_dir, sum(r.global_step for r in results), max_steps,
                       before, finished, all(r.reused for r in results) and finished, spent, last.final_loss,
                       last.model if finished else None, stages=tuple(results))


def curriculum_curve(stages: Sequence[CurriculumStage], output_dir: str | Path,
                     episodes: Sequence[Episode]) -> "pd.DataFrame":  # noqa: F821
    """The learning curve of a curriculum: each stage's ``eval_curve.csv`` (``episodes_seen`` counting the
    earlier stages' episodes), one table, with k-means on the same episodes as a reference column."""
    import pandas as pd

    paths = [d / "eval_curve.csv" for d in stage_dirs(stages, output_dir)]
    parts = [pd.read_csv(path) for path in paths if path.exists()]
    curve = (pd.concat(parts, ignore_index=True) if parts
             else pd.DataFrame(columns=["step", "episodes_seen", "accuracy"]))
    return curve.assign(kmeans_accuracy=kmeans_reference(episodes))


def stage_loss_curves(adapter_dir: str | Path) -> dict:
    """Each stage's ``loss_curve.csv`` of a curriculum's final adapter folder, in order, ``episodes_seen``
    counting the earlier stages' episodes: a training folder (``<dir>_stages/<k>-<name>``) or a published one
    (``<dir>/stages/<k>-<name>``); a single run gives one curve."""
    import pandas as pd

    adapter_dir = Path(adapter_dir)
    stages = [p for p in (*adapter_dir.with_name(f"{adapter_dir.name}_stages").glob("*"),
                          *(adapter_dir / "stages").glob("*")) if (p / "loss_curve.csv").is_file()]
    stages = sorted(stages, key=lambda p: int(p.name.split("-")[0])) + [adapter_dir]
    curves, before = {}, 0
    for folder in stages:
        if (folder / "loss_curve.csv").is_file():
            curve = pd.read_csv(folder / "loss_curve.csv")
            curves[folder.name if folder != adapter_dir else "final stage"] = curve.assign(
                episodes_seen=curve["episodes_seen"] + before)
            before += int(curve["episodes_seen"].max())
    return curves
