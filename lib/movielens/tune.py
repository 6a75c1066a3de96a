"""``make tune``: every model's hyperparameters searched with one budget, on validation.

Optuna's TPE sampler (seeded) maximises validation NDCG@10 with the same number of trials
for every model, baselines included (the budget is counted in trials, and the report shows
each model's seconds beside it). A tune file (``params/movielens/tuning/tune.yaml``) names the
datasets, the trials per model and each model's base params file and search space (dotted
params keys: ``{float: [low, high], log: true}``, ``{int: [low, high]}`` or ``{choices:
[...]}``). A trial is a run of the base params file with the sampled values (and no
``select_on_validation`` grid), trained and scored on validation by the study's own steps
(cached like any run). Progress is stored in ``build/movielens/tune/<dataset>.db`` (SQLite,
Optuna's storage): an interrupted tuning resumes where it stopped, and trials already run
are not repeated. Written at the end, for each dataset: ``<output>/<dataset>_<model>.yaml``
(the base file with the best values: what the report trains) and ``<output>/<dataset>.json``,
the tuning table (trials, best value, best values, seconds and the commits whose code ran
the trials, per model; ``--models`` tunes some and keeps the others' rows). Optuna rather than a grid of our own: TPE,
seeding, resumable storage and failure handling are its job.

    python -m lib.movielens.tune params/movielens/tuning/tune.yaml [--datasets ml-100k] [--models ease,ials]
                                 [--jobs 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import zlib
from pathlib import Path

import yaml

from ..core.device import DEVICES, pick_device
from ..core.files import atomic_write_json, atomic_write_text
from ..core.params import ParamsError, load_yaml
from ..core.runs import ROOT, build_root, configure, run_parameters
from . import steps

KINDS = ("float", "int", "choices")
TUNE_KEYS = ("datasets", "trials", "seed", "output", "models")


def tune_config(path: Path) -> dict:
    """The tune file, checked: every model's base file and search space before any trial runs."""
    raw = load_yaml(path)
    cfg = raw.get("tune")
    if not isinstance(cfg, dict):
        raise ParamsError(f"{path}: a tune file has a 'tune:' mapping")
    unknown = set(cfg) - set(TUNE_KEYS)
    if unknown:
        raise ParamsError(f"{path}: tune: unknown key(s) {sorted(unknown)}; allowed: {list(TUNE_KEYS)}")
    if not isinstance(cfg.get("trials"), int) or cfg["trials"] < 1:
        raise ParamsError(f"{path}: tune.trials must be an integer >= 1, got {cfg.get('trials')!r}")
    names = [m.get("name") for m in cfg.get("models") or []]
    if not names or len(set(names)) != len(names):
        raise ParamsError(f"{path}: tune.models: a list of {{name, params, space}} with distinct names")
    for m in cfg["models"]:
        if set(m) != {"name", "params", "space"}:
            raise ParamsError(f"{path}: tune.models.{m.get('name')}: needs exactly name, params and space")
        for key, spec in m["space"].items():
            _check_spec(f"{path}: tune.models.{m['name']}.space.{key}", spec)
        for dataset in cfg["datasets"]:  # the base file with every space's low end must be a valid run
            trial_run(m, dataset, {k: _low(s) for k, s in m["space"].items()}, "check")
    return {"seed": 0, "output": "params/movielens/tuning", **cfg}


def _check_spec(where: str, spec) -> None:
    if not isinstance(spec, dict) or len(set(spec) & set(KINDS)) != 1 or set(spec) - set(KINDS) - {"log"}:
        raise ParamsError(f"{where}: one of {{float: [low, high]}}, {{int: [low, high]}}, {{choices: [...]}} "
                          f"(optionally log: true), got {spec!r}")
    kind = next(k for k in KINDS if k in spec)
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise ParamsError(f"{where}.{kind}: a non-empty list, got {values!r}")
    if kind != "choices" and (len(values) != 2 or not values[0] < values[1] or (spec.get("log") and values[0] <= 0)):
        raise ParamsError(f"{where}.{kind}: [low, high] with low < high (and low > 0 with log), got {values!r}")


def _low(spec: dict):
    return spec["choices"][0] if "choices" in spec else spec[next(k for k in KINDS if k in spec)][0]


def _suggest(trial, key: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if "int" in spec:
        return trial.suggest_int(key, *spec["int"], log=bool(spec.get("log")))
    return trial.suggest_float(key, *map(float, spec["float"]), log=bool(spec.get("log")))


def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = params
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def trial_run(model: dict, dataset: str, values: dict, name: str, device: str | None = None):
    """The run of ``model``'s base file on ``dataset`` with ``values`` (dotted keys), scored on
    validation only, without its ``select_on_validation`` grid, on ``device`` if given;
    validated (a ``ParamsError`` names the key)."""
    params = run_parameters(ROOT / model["params"])  # a fresh dict: edited below
    if device:
        params["device"] = device
    params["data"]["dataset"] = dataset
    params["model"].pop("select_on_validation", None)
    params["evaluate"] = dict(params["evaluate"], splits=["val"])
    for key, value in values.items():
        _set(params, key, value)
    params["run"] = name
    return configure(**params)


def _objective(model: dict, dataset: str, commit: str, device: str | None):
    def objective(trial) -> float:
        values = {key: _suggest(trial, key, spec) for key, spec in model["space"].items()}
        run = trial_run(model, dataset, values, f"tune_{dataset}_{model['name']}_{trial.number}", device)
        t0 = time.perf_counter()
        steps.evaluate(run)
        result = json.loads((run.dir / "metrics.json").read_text())
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("train_seconds", result["train"]["seconds"])
        trial.set_user_attr("commit", commit)  # the code that ran it
        return float(result["splits"]["val"]["metrics"]["ndcg@10"])
    return objective


def tune_model(model: dict, dataset: str, trials: int, seed: int, storage: str, commit: str,
               earlier_commits: tuple = ("unknown",), device: str | None = None) -> dict:
    """Run ``model``'s remaining trials (of ``trials``) on ``dataset`` with the code of ``commit``;
    its summary. ``earlier_commits``: those recorded for trials that predate the per-trial record."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed + zlib.crc32(model["name"].encode()) % 2**16)
    study = optuna.create_study(study_name=f"{dataset}/{model['name']}", storage=_rdb(storage), direction="maximize",
                                sampler=sampler, load_if_exists=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)

    def done() -> list:
        return [t for t in study.get_trials(deepcopy=False) if t.state in finished]

    def report(study_, trial) -> None:
        best = study_.best_value if any(t.state == optuna.trial.TrialState.COMPLETE for t in study_.trials) else math.nan
        value = "failed" if trial.value is None else f"{trial.value:.4f}"
        print(f"[{dataset} {model['name']}] trial {len(done())}/{trials}: val NDCG@10 {value} "
              f"(best {best:.4f}) in {trial.user_attrs.get('seconds', 0.0):.1f} s", flush=True)

    left = trials - len(done())
    if left > 0:
        study.optimize(_objective(model, dataset, commit, device), n_trials=left, callbacks=[report],
                       catch=(steps.DivergedError, FloatingPointError))
    complete = [t for t in done() if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"{dataset} {model['name']}: every one of {trials} trials failed")
    best = max(complete, key=lambda t: t.value)
    return {"name": model["name"], "base_params": model["params"], "trials": len(done()),
            "failed": len(done()) - len(complete), "best_value": best.value, "best_trial": best.number,
            "best_params": best.params, "seconds": sum(t.user_attrs.get("seconds", 0.0) for t in done()),
            "space": model["space"],
            "commits": sorted({c for t in done()
                               for c in ([t.user_attrs["commit"]] if "commit" in t.user_attrs else earlier_commits)})}


def write_tuned(model: dict, dataset: str, summary: dict, folder: Path) -> Path:
    """The base params file with the best values, on ``dataset``: what the report trains."""
    raw = {"study": "movielens", **load_yaml(ROOT / model["params"])}  # it lives outside params/movielens/
    raw.setdefault("data", {})["dataset"] = dataset
    (raw.get("model") or {}).pop("select_on_validation", None)
    for key, value in summary["best_params"].items():
        _set(raw, key, value)
    header = (f"# Tuned by `make tune` ({summary['trials']} Optuna TPE trials on {dataset} validation NDCG@10, "
              f"best {summary['best_value']:.4f}):\n# {model['params']} with "
              + ", ".join(f"{k} = {v}" for k, v in summary["best_params"].items())
              + ". Generated: edit params/movielens/tuning/tune.yaml and rerun, not this file.\n")
    out = folder / f"{dataset}_{model['name']}.yaml"
    atomic_write_text(out, header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    return out


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _commit(output: Path) -> str:
    """This checkout's commit, with "-dirty" when a tracked file outside the tuning's own
    output folder differs from it (the trials then ran code that no commit holds)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    inside = [f":(exclude){output.relative_to(ROOT)}"] if output.is_relative_to(ROOT) else []
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *inside)
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")


def _storage(dataset: str) -> str:
    """The dataset's SQLite storage, its tables created here: worker processes that each
    created them at once would race on the schema."""
    store = build_root() / "movielens" / "tune"
    store.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{store / f'{dataset}.db'}"
    _rdb(url)
    return url


def _rdb(url: str):
    """Optuna's storage at ``url``; with --jobs, processes share a file: a writer waits for the
    lock (up to a minute) instead of failing at once."""
    import optuna
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tune_file", nargs="?", default="params/movielens/tuning/tune.yaml")
    ap.add_argument("--datasets", help="comma-separated subset of the tune file's datasets")
    ap.add_argument("--models", help="comma-separated subset of the tune file's models")
    ap.add_argument("--trials", type=int, help="trials per model instead of the tune file's (a quick look)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="models tuned at once, each in its own process (make tune: one per core); a model's "
                         "trials stay sequential, so the values found are the same")
    ap.add_argument("--device", choices=DEVICES, help="every trial on this device (auto: cuda when torch sees a GPU)")
    args = ap.parse_args(argv)
    try:
        cfg = tune_config(ROOT / args.tune_file)
        device = pick_device(args.device).type if args.device else None
        if args.jobs < 1:
            raise ParamsError(f"--jobs must be >= 1, got {args.jobs}")
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    datasets = args.datasets.split(",") if args.datasets else cfg["datasets"]
    models = [m for m in cfg["models"] if not args.models or m["name"] in args.models.split(",")]
    trials = args.trials or cfg["trials"]
    folder = ROOT / cfg["output"]
    commit = _commit(folder)
    t0 = time.perf_counter()
    previous = {d: json.loads((folder / f"{d}.json").read_text()) if (folder / f"{d}.json").is_file()
                else {"models": {}} for d in datasets}
    tasks = []
    for dataset in datasets:
        for model in models:
            earlier = previous[dataset]["models"].get(model["name"], {}).get("commits") or \
                [previous[dataset].get("commit", "unknown")]
            tasks.append((model, dataset, trials, cfg["seed"], _storage(dataset), commit, earlier, device))
    # the longest first (by the seconds a previous tuning recorded), so that no core idles at the end
    tasks.sort(key=lambda t: -previous[t[1]]["models"].get(t[0]["name"], {}).get("seconds", math.inf))
    if args.jobs > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(args.jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_tune_task, tasks))
    else:
        results = [_tune_task(t) for t in tasks]
    for dataset in datasets:
        summaries = [s for (_, d, *_), s in zip(tasks, results) if d == dataset]
        for (model, d, *_), summary in zip(tasks, results):
            if d == dataset:
                summary["params_file"] = _shown(write_tuned(model, dataset, summary, folder))
        table = folder / f"{dataset}.json"
        # read again: another `tune --models ...` may have written its rows since this one started
        latest = json.loads(table.read_text()) if table.is_file() else {"models": {}}
        merged = {**latest["models"], **{s["name"]: s for s in summaries}}
        for m in merged.values():  # a row written before rows carried their commits
            m.setdefault("commits", [latest.get("commit", "unknown")])
        atomic_write_json(table, {"dataset": dataset, "metric": "val_ndcg@10", "sampler": "optuna TPE",
                                  "trials_per_model": trials, "seed": cfg["seed"],
                                  "commits": sorted({c for m in merged.values() for c in m["commits"]}),
                                  "tune_file": args.tune_file, "models": merged,
                                  # the tuning's cost: every model's trials, whichever invocation ran them
                                  "seconds": sum(m["seconds"] for m in merged.values())})
        print(f"{dataset}: {len(summaries)} models tuned -> {_shown(table)}")
    print(f"tuned {len(tasks)} (dataset, model) pairs in {time.perf_counter() - t0:.0f} s with {args.jobs} job(s)")
    return 0


def _tune_task(task: tuple) -> dict:
    return tune_model(*task)


if __name__ == "__main__":
    sys.exit(main())
