"""The ``metashot`` command: train, eval, predict, data verify."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from metashot import __version__

SET_HELP = "override a config value, e.g. --set train.seed=1 (repeatable; the value is read as YAML)"
QUIET_HELP = ("no progress bars, including the one-off bars that decode a dataset into its cache and the "
              "text encoder's loading bars (sets METASHOT_QUIET=1)")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or a negative count is an error, never "use the default")."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _given(value: Any, default: Any) -> Any:
    """``value`` unless the flag was not given (None); unlike ``value or default``, 0 is not "not given"."""
    return default if value is None else value


def _check_device(device: Any, where: str) -> None:
    """A one-line error for a device this machine does not have (torch raises an AssertionError for CUDA on
    a CPU-only build, mid-run)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{where}: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: device {device!r}, but CUDA is not available here (this PyTorch build "
                         f"has no CUDA support, or no GPU is visible); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{where}: device {device!r}, but {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: device {device!r}, but Apple's MPS is not available here; use cpu")


def _read_run_json(run_dir: str | Path, name: str = "config.yaml") -> Any:
    """The JSON file ``name`` of a run folder; errors name the file."""
    p = Path(run_dir) / name
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a metashot run folder: {name} is missing")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e}); the run's config was damaged: repair it or start a new "
                         f"run from its YAML config") from e


def _config_sections(meta: dict[str, Any], checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``data`` and ``eval`` sections of a checkpoint's config; a missing one is an error naming them."""
    cfg = meta["config"]
    missing = [k for k in ("data", "eval") if not isinstance(cfg.get(k), dict)]
    if "data" not in missing:
        missing += [f"data.{k}" for k in ("dataset", "test_split") if k not in cfg["data"]]
    if missing:
        raise ValueError(f"checkpoint {checkpoint}: the config in its config.json lacks "
                         f"{', '.join(repr(k) for k in missing)}; re-create the checkpoint")
    return cfg["data"], cfg["eval"]


def _query_images(query: str | Path) -> list[Path]:
    """The images of ``--query``: one image file, or the images of a folder (``list_images``' rules)."""
    from metashot.data.folder import IMAGE_SUFFIXES, list_images

    q = Path(query)
    if q.is_file():
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"query {q} is a file but not an image (expected one of "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}); give an image or a folder of images")
        return [q]
    if not q.exists():
        raise FileNotFoundError(f"query {q} does not exist (give an image file or a folder of images)")
    return list_images(q)


def _cmd_train(a: argparse.Namespace) -> int:
    from metashot.config import Config, apply_overrides, load_config
    from metashot.train import run_config, train_from_config

    if a.config is None and a.resume is None:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run with its own config")
    if a.config is not None:
        cfg = load_config(a.config, a.set)
    else:  # the run's own config, with --set overrides (e.g. more train.steps)
        cfg = Config.from_dict(apply_overrides(run_config(a.resume).to_dict(), a.set), source=f"{a.resume}")
    _check_device(cfg.train.device, "train.device")
    summary = train_from_config(cfg, progress=not a.quiet, resume=a.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    sig = summary.get("signal")
    return 128 + sig if isinstance(sig, int) else 0


def _cmd_plot(a: argparse.Namespace) -> int:
    from metashot.plot import plot_run
    from metashot.rl.plots import is_rl_run, plot_rl_run

    print(plot_rl_run(a.run_dir, a.output) if is_rl_run(a.run_dir) else plot_run(a.run_dir, a.output))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from metashot.checkpoint import load_checkpoint
    from metashot.data import load_split
    from metashot.data.checks import check_channels
    from metashot.evaluate import OMNIGLOT_EPISODES, evaluate

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    learner, meta = load_checkpoint(a.checkpoint, a.device)
    if a.path:
        if not hasattr(learner, "vectorized"):
            raise ValueError(f"--path applies to the gradient-based learners (MAML, Meta-SGD, ANIL); "
                             f"{type(learner).__name__} has no inner loop to vectorise")
        learner.vectorized = a.path == "vectorized"
    if a.inner_steps is not None:
        if not hasattr(learner, "inner_steps_test"):
            raise ValueError(f"--inner-steps applies to the gradient-based learners (MAML, Meta-SGD, ANIL, "
                             f"Reptile); {type(learner).__name__} has no inner loop")
        if a.inner_steps < 0:
            raise ValueError(f"--inner-steps must be >= 0, got {a.inner_steps}")
        learner.inner_steps_test = a.inner_steps
    data, ev = _config_sections(meta, a.checkpoint)
    dataset = a.dataset or data["dataset"]
    split = a.split or data["test_split"]
    episodes = _given(a.episodes, OMNIGLOT_EPISODES if dataset == "omniglot" else ev["episodes"])
    options = dict(data.get("options") or {}) if dataset == data["dataset"] else {}
    spec = meta.get("image_spec")
    if spec and (dataset == "folder" or ("crop_pct" in spec and dataset in ("mini_imagenet", "flowers102"))):
        # A user's own folder is read as `predict` reads it, with the checkpoint's preprocessing (size,
        # channels, ink polarity, crop); so is a photo dataset for a pretrained model's own input pipeline.
        options["image_spec"] = spec
    store = load_split(dataset, split, a.root or data.get("root"), data.get("image_size"), **options)
    check_channels(store, meta.get("image_spec"), f"checkpoint {a.checkpoint}", trained_on=data["dataset"])
    res = evaluate(learner, store, _given(a.ways, ev["ways"]), _given(a.shots, ev["shots"]),
                   _given(a.queries, ev["queries"]), episodes, _given(a.seed, ev["seed"]),
                   _given(a.meta_batch, ev.get("meta_batch", 16)), a.device, progress=not a.quiet)
    res["checkpoint"] = str(a.checkpoint)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['dataset']} {res['ways']}-way {res['shots']}-shot, {res['episodes']} episodes (seed "
              f"{res['seed']}): {res['acc']:.2f} +- {res['ci95']:.2f} %")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from metashot.classifier import load
    from metashot.csv_safe import spreadsheet_safe
    from metashot.data.folder import list_folder

    clf = load(a.checkpoint, a.device)
    if clf.text_encoder is not None:  # text checkpoint: sentence files instead of image folders
        from metashot.text.glue import predict_text_cli

        return predict_text_cli(clf, a.support, a.query, a.output, a.threshold)
    classes = list_folder(Path(a.support))
    images, labels = [], []
    for name, files in classes.items():
        images += files
        labels += [name] * len(files)
    clf.fit(images, labels)
    # An image file, or a folder with the support side's rules: other files skipped with one warning naming
    # them all, unreadable images fail.
    queries = _query_images(a.query)
    proba = clf.predict_proba(queries)
    out = open(a.output, "w", newline="") if a.output else sys.stdout
    w = csv.writer(out)
    w.writerow(["file", "label", "confidence"])
    for f, p in zip(queries, proba, strict=True):
        k = int(p.argmax())
        w.writerow([spreadsheet_safe(f), spreadsheet_safe(clf.classes_[k]), f"{p[k]:.4f}"])
    if a.output:
        out.close()
    return 0


def _cmd_sinusoid_train(a: argparse.Namespace) -> int:
    """MAML-family training on sinusoid regression (Finn et al. 2017, section 5.1); no image store."""
    from metashot.checkpoint import build_learner
    from metashot.config import load_config
    from metashot.data.sinusoid import sinusoid_source
    from metashot.train import Trainer

    cfg = load_config(a.config, a.set)
    if cfg.data.dataset != "sinusoid":
        raise ValueError(f"{a.config}: data.dataset is {cfg.data.dataset!r}; `metashot sinusoid train` needs "
                         f"'sinusoid' (use `metashot train` for image datasets)")
    _check_device(cfg.train.device, "train.device")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    learner = build_learner(dict(cfg.model.__dict__))
    ep = cfg.episodes
    source = sinusoid_source(cfg.data.options, ep.shots, ep.queries, ep.meta_batch, cfg.train.seed)
    summary = Trainer(learner, source, cfg, None, progress=not a.quiet).fit()
    print(json.dumps(summary))
    return 0


def _cmd_sinusoid_eval(a: argparse.Namespace) -> int:
    """Sinusoid MSE after 1/5/10 fine-tuning steps on K points; optional Figure-2-like PNG."""
    from metashot.checkpoint import load_checkpoint
    from metashot.data.sinusoid import finetune_mse, plot_fits

    if a.threads:
        torch.set_num_threads(a.threads)
    learners = {}
    report = {}
    for label, path in (("MAML", a.checkpoint), ("pretrained", a.baseline)):
        if path is None:
            continue
        learner, _ = load_checkpoint(path, a.device)
        if a.inner_lr is not None:
            learner.inner_lr = a.inner_lr
        learners[label] = learner
        res = finetune_mse(learner, a.shots, a.steps, a.tasks, a.queries, a.seed, device=a.device)
        report[label] = {"checkpoint": str(path), **res}
    if a.plot:
        report["plot"] = str(plot_fits(learners, a.plot, a.shots))
    print(json.dumps(report, indent=None if a.json else 2))
    return 0


def _cmd_lake(a: argparse.Namespace) -> int:
    from metashot.data.lake_runs import load_lake_runs
    from metashot.lake import evaluate_checkpoint, evaluate_mhd

    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.checkpoint is None) == (a.baseline is None):
        raise ValueError("give either a CHECKPOINT or --baseline mhd (not both)")
    if a.val:
        from metashot.data.lake_runs import validation_runs

        runs = validation_runs(root=a.root)
    else:
        runs = load_lake_runs(a.root)
    if a.runs:
        runs = runs[: a.runs]
    res = evaluate_mhd(runs) if a.baseline else evaluate_checkpoint(a.checkpoint, runs, a.device)
    if a.json:
        print(json.dumps(res))
    else:
        which = " (validation runs)" if a.val else ""
        print(f"Lake 20-way one-shot{which}, {res['runs']} runs / {res['trials']} trials, {res['method']}: "
              f"{res['error']:.2f} % error")
    return 0


def _cmd_rl_train(a: argparse.Namespace) -> int:
    from metashot.config import apply_overrides
    from metashot.rl.train import RLConfig, load_rl_config, train_rl

    if a.config is None and a.resume is None:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run with its own config")
    if a.config is not None:
        cfg = load_rl_config(a.config, a.set)
    else:
        raw = _read_run_json(a.resume)
        cfg = RLConfig.from_dict(apply_overrides(raw, a.set), source=str(a.resume))
    _check_device(cfg.train.device, "train.device")
    summary = train_rl(cfg, progress=not a.quiet, resume=a.resume)
    print(json.dumps(summary))
    sig = summary.get("signal")
    return 128 + sig if isinstance(sig, int) else 0


def _cmd_rl_eval(a: argparse.Namespace) -> int:
    from metashot.rl.plots import PAPER_RETURNS, plot_adaptation, plot_navigation
    from metashot.rl.train import RLConfig, evaluate_adaptation, load_policy, make_policy

    torch.set_num_threads(a.threads)
    if not a.checkpoints and not a.random:
        raise ValueError("eval: give one or more CHECKPOINTs and/or --random")
    loaded = [(Path(c).name if Path(c).exists() else c, *load_policy(c)[:2]) for c in a.checkpoints]
    if a.random:
        base = loaded[0][2] if loaded else RLConfig.from_dict({"env": {"name": a.env}})
        if base.env.options.get("observe_goal"):
            base = RLConfig.from_dict({**base.to_dict(), "env": {**base.to_dict()["env"], "options": {}}})
        env0 = base.make_env()
        loaded.append(("random-init", make_policy(base, env0, a.random_seed), base))
    per_label: dict[str, list[float]] = {}
    for item in a.lr_of:
        label, _, lrs = item.partition("=")
        try:
            per_label[label] = [float(x) for x in lrs.split(",")]
        except ValueError as e:
            raise ValueError(f"--lr-of expects LABEL=LR[,LR...], got {item!r}") from e
    unknown = set(per_label) - {label for label, *_ in loaded}
    if unknown:
        raise ValueError(f"--lr-of names no evaluated policy: {sorted(unknown)}; labels are "
                         f"{[label for label, *_ in loaded]}")
    report: dict[str, Any] = {}
    for label, policy, cfg in loaded:
        ev = cfg.eval
        env = cfg.make_env()
        lrs = per_label.get(label) or a.inner_lr or ev.inner_lr
        res = evaluate_adaptation(policy, env, a.tasks or ev.tasks, a.trajectories or ev.trajectories,
                                  ev.steps if a.steps is None else a.steps, lrs,
                                  ev.seed if a.seed is None else a.seed, cfg.algo.discount)
        env.close()
        report[label] = res
        if not a.json:
            pairs = zip(res["returns"], res["ci95"], strict=True)
            steps = ", ".join(f"{k}: {r:.2f} +- {c:.2f}" for k, (r, c) in enumerate(pairs))
            print(f"{label} ({res['env']}, {res['tasks']} tasks x {res['trajectories']} trajectories): "
                  f"return after k steps {steps}")
    if a.plot:
        ref = PAPER_RETURNS.get(loaded[0][2].env.name) if a.paper_reference else None
        report["plot"] = str(plot_adaptation(report, a.plot, ref))
    if a.plot_trajectories:
        label, policy, cfg = loaded[0]
        report["plot_trajectories"] = str(plot_navigation(policy, cfg, a.plot_trajectories))
    if a.json:
        for r in report.values():
            if isinstance(r, dict):
                r.pop("per_task_returns", None)
        print(json.dumps(report))
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    """The bundled checkpoints, each with its card: domain | input | training | measured figure."""
    from metashot.checkpoint import CONFIG, bundled_names, bundled_path

    rows = []
    for name in bundled_names():
        path = bundled_path(name)
        assert path is not None
        try:
            card = json.loads((path / CONFIG).read_text()).get("card", "")
        except (OSError, ValueError, AttributeError):
            card = ""
        rows.append({"name": name, "card": card or "(no card)", "path": str(path)})
    if a.json:
        print(json.dumps(rows))
    else:
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            print(f"{r['name']:{width}s}  {r['card']}")
    return 0


def _cmd_data_verify(a: argparse.Namespace) -> int:
    from metashot.data.verify import verify_all

    report = verify_all(a.root)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            print(f"{name:34s} {r['status']:8s} {r.get('detail', '')}")
    return 0 if all(r["status"] in ("ok", "missing") for r in report.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metashot", description="Meta-learning and few-shot learning.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="the bundled models: domain, input, training data and measured figure")
    m.add_argument("--json", action="store_true", help="print one JSON list of {name, card, path}")
    m.set_defaults(func=_cmd_models)

    t = sub.add_parser("train", help="meta-train from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's own config)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last/ checkpoint, bit-for-bit")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    t.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="accuracy +- 95%% CI on fixed seeded episodes")
    e.add_argument("checkpoint", help="checkpoint folder, run folder or bundled name")
    e.add_argument("--dataset", help="dataset to evaluate on, e.g. omniglot, mini_imagenet, flowers102, "
                   "folder (default: the checkpoint's training dataset)")
    e.add_argument("--split", help="split to evaluate on (default: the config's test split)")
    e.add_argument("--root", help="data root (default $METASHOT_DATA, else ~/.cache/metashot/data)")
    e.add_argument("--ways", type=_positive_int, help="classes per episode (default: the config's eval.ways)")
    e.add_argument("--shots", type=_positive_int,
                   help="labelled examples per class in each support set (default: the config's eval.shots)")
    e.add_argument("--queries", type=_positive_int,
                   help="query examples per class in each episode (default: the config's eval.queries)")
    e.add_argument("--episodes", type=_positive_int, help="number of fixed test episodes (default: the "
                   "config's eval.episodes; 1000 on Omniglot, the ProtoNet paper's protocol)")
    e.add_argument("--seed", type=int, help="seed of the test episodes: the same seed gives the same "
                   "episodes (default: the config's eval.seed)")
    e.add_argument("--meta-batch", type=_positive_int,
                   help="episodes per forward pass (default: the config's eval.meta_batch); lower it when a "
                        "large setting (e.g. a Relation Net at 20 ways) does not fit in memory")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    e.add_argument("--threads", type=_positive_int,
                   help="CPU threads of PyTorch (default: PyTorch's own choice)")
    e.add_argument("--json", action="store_true",
                   help="print one JSON object (acc and ci95 in percent) instead of a sentence")
    e.add_argument("--quiet", action="store_true",
                   help=QUIET_HELP + "; bars are drawn on stderr, so --json output on stdout is unaffected")
    e.add_argument("--path", choices=["vectorized", "loop"],
                   help="MAML family: adapt the episodes of a batch with vmap or one by one (the same "
                        "numbers up to rounding; on CPU the loop is faster for large images, e.g. 84x84; "
                        "default: the checkpoint's own setting)")
    e.add_argument("--inner-steps", type=int,
                   help="MAML family: gradient steps on each support set at test (default: the checkpoint's "
                        "inner_steps_test)")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="classify an image or a folder of images (or sentences) from a "
                        "support set")
    pr.add_argument("checkpoint")
    pr.add_argument("--support", required=True, help="folder of class subfolders with a few images each "
                    "(text checkpoints: a UTF-8 CSV with text,label columns)")
    pr.add_argument("--query", required=True, help="an image file or a folder of images to classify "
                    "(text checkpoints: a CSV with a text column, or a text file with one sentence per line)")
    pr.add_argument("--threshold", type=float, help="text checkpoints: label 'oos' (out of scope) when the "
                    "confidence is below this")
    pr.add_argument("--output", help="CSV file (default: standard output)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_cmd_predict)

    pl = sub.add_parser("plot", help="PNG learning curves of a run (needs matplotlib: metashot[plot])")
    pl.add_argument("run_dir", help="run folder with metrics.jsonl")
    pl.add_argument("--output", help="PNG file (default RUN_DIR/learning_curves.png)")
    pl.set_defaults(func=_cmd_plot)

    sn = sub.add_parser("sinusoid", help="sinusoid regression (MAML section 5.1): train / eval")
    snsub = sn.add_subparsers(dest="sinusoid_command", required=True)
    st = snsub.add_parser("train", help="meta-train a MAML-family learner (config with dataset sinusoid)")
    st.add_argument("config")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    st.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    st.set_defaults(func=_cmd_sinusoid_train)
    se = snsub.add_parser("eval", help="MSE after fine-tuning on K points with 1/5/10 steps (Table 2)")
    se.add_argument("checkpoint", help="MAML checkpoint (run folder or checkpoint folder)")
    se.add_argument("--baseline", help="a pretrained-on-all-tasks checkpoint (inner_steps=0) to compare")
    se.add_argument("--shots", type=int, default=5)
    se.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10])
    se.add_argument("--tasks", type=int, default=600)
    se.add_argument("--queries", type=int, default=100)
    se.add_argument("--seed", type=int, default=4321)
    se.add_argument("--inner-lr", type=float, help="override the fine-tuning step size")
    se.add_argument("--plot", help="write a Figure-2-like PNG here (needs matplotlib)")
    se.add_argument("--device", default="cpu")
    se.add_argument("--threads", type=int)
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=_cmd_sinusoid_eval)

    lk = sub.add_parser("lake", help="error rate on Lake et al.'s 20-way within-alphabet one-shot runs")
    lk.add_argument("checkpoint", nargs="?", help="checkpoint folder, run folder or bundled name")
    lk.add_argument("--baseline", choices=["mhd"], help="training-free baseline instead of a checkpoint")
    lk.add_argument("--root", help="data root holding omniglot/all_runs.zip (default $METASHOT_DATA)")
    lk.add_argument("--runs", type=int, help="only the first RUNS runs (default: all 20)")
    lk.add_argument("--val", action="store_true",
                    help="the 50 validation runs from the held-out background alphabets instead of Lake's "
                         "20 test runs (choose models on these)")
    lk.add_argument("--device", default="cpu")
    lk.add_argument("--threads", type=int)
    lk.add_argument("--json", action="store_true", help="print one JSON object (error in percent)")
    lk.set_defaults(func=_cmd_lake)

    rl = sub.add_parser("rl", help="meta-reinforcement learning (MAML-TRPO): train / eval")
    rlsub = rl.add_subparsers(dest="rl_command", required=True)
    rt = rlsub.add_parser("train", help="meta-train a policy from a YAML config (configs/*-trpo-*.yaml)")
    rt.add_argument("config", nargs="?", help="YAML config (optional with --resume)")
    rt.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last/")
    rt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    rt.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    rt.set_defaults(func=_cmd_rl_train)
    re_ = rlsub.add_parser("eval", help="average return on new tasks after 0, 1, 2, 3 adaptation steps")
    re_.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="run folders or checkpoint folders")
    re_.add_argument("--random", action="store_true", help="also evaluate a randomly initialised policy")
    re_.add_argument("--random-seed", type=int, default=0)
    re_.add_argument("--env", default="navigation2d", help="environment for --random without a checkpoint")
    re_.add_argument("--tasks", type=int, help="number of test tasks (default: the config's, 40)")
    re_.add_argument("--trajectories", type=int, help="trajectories per task and step (default 40)")
    re_.add_argument("--steps", type=int, help="adaptation steps (default: the config's, 3)")
    re_.add_argument("--inner-lr", type=float, nargs="+", help="step size per adaptation step (the last "
                     "repeats), for every policy")
    re_.add_argument("--lr-of", action="append", default=[], metavar="LABEL=LR[,LR...]",
                     help="step sizes of one policy (label: its folder name, or random-init); repeatable")
    re_.add_argument("--seed", type=int, help="seed of the test tasks (default: the config's)")
    re_.add_argument("--threads", type=int, default=1)
    re_.add_argument("--plot", help="PNG of return vs adaptation steps (needs matplotlib)")
    re_.add_argument("--paper-reference", action="store_true",
                     help="draw the paper's rows (2D navigation: MAML, pretrained, random, oracle)")
    re_.add_argument("--plot-trajectories", help="PNG of 2D-navigation trajectories before/after adaptation "
                     "of the first checkpoint")
    re_.add_argument("--json", action="store_true")
    re_.set_defaults(func=_cmd_rl_eval)

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("verify", help="which datasets are present and whether they check out")
    v.add_argument("--root", help="data root (default $METASHOT_DATA)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_data_verify)
    return p


def main(argv: list[str] | None = None) -> Any:
    parser = build_parser()
    a = parser.parse_args(argv)
    quiet_before = os.environ.get("METASHOT_QUIET")
    if a.__dict__.get("quiet"):  # every bar honours it, also those of the data and text modules
        os.environ["METASHOT_QUIET"] = "1"
    try:
        _check_device(a.__dict__.get("device"), "--device")
        rc = a.func(a)
        sys.stdout.flush()  # a closed pipe (metashot ... | head) shows up here, not at interpreter exit
        return rc
    except BrokenPipeError:
        _stdout_to_devnull()
        return 1
    except (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError, ImportError) as e:
        if a.__dict__.get("debug"):
            raise
        print(f"metashot {a.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if quiet_before is None:
            os.environ.pop("METASHOT_QUIET", None)
        else:
            os.environ["METASHOT_QUIET"] = quiet_before


def _stdout_to_devnull() -> None:
    """After the reader of our stdout went away: send what is still buffered to /dev/null, so Python's
    final flush raises no second BrokenPipeError (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
