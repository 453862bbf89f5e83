"""The ``metashot`` command: parses its arguments, calls the library, prints; it knows no algorithm."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from metashot import __version__, fit_cli
from metashot import cli_args as ca
from metashot.devices import check_device
from metashot.eval_settings import eval_flags, setting_flag, settings_from_flags
from metashot.messages import one_line_warnings
from metashot.os_errors import os_error_line

# torch is imported by the commands that use it, not here: `metashot --version` and `--help` stay instant.

SET_HELP = "override a config value, e.g. --set train.seed=1 (repeatable; the value is read as YAML)"
QUIET_HELP = ("no progress bars, including the one-off bars that decode a dataset into its cache and the "
              "text encoder's loading bars (sets METASHOT_QUIET=1)")


def _cmd_train(a: argparse.Namespace) -> int:
    from metashot.config import Config, apply_overrides, load_config
    from metashot.train import run_config, train_from_config

    if a.config is None and a.resume is None:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run with its own config")
    if a.config is not None:
        cfg = load_config(a.config, a.set)
    else:  # the run's own config, with --set overrides (e.g. more train.steps)
        cfg = Config.from_dict(apply_overrides(run_config(a.resume).to_dict(), a.set), source=f"{a.resume}")
    check_device(cfg.train.device, "train.device")
    if a.resume is None and not a.overwrite:  # a forgotten --resume must not delete a run's checkpoints
        from metashot.runs import RunDir

        used = RunDir(cfg.out_dir()).earlier_run()
        if used:
            raise ValueError(f"run folder {cfg.out_dir()} holds an earlier run ({', '.join(used)}); "
                             f"continue it with --resume {cfg.out_dir()}, start afresh there with "
                             f"--overwrite (deletes them), or train into another folder "
                             f"(--set train.out_dir=...)")
    summary = train_from_config(cfg, progress=not a.quiet, resume=a.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return ca.exit_code(summary)


def _cmd_plot(a: argparse.Namespace) -> int:
    from metashot.plot import plot_any_run

    print(plot_any_run(a.run_dir, a.output))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from metashot.evaluate import evaluate_checkpoint

    if a.ways is None:
        a.ways = ca.split_ways(a.dataset, a.split, a.root)
    ca.eval_limits(a)  # --ways within the split's classes, and a forward pass of bounded size

    ca.set_threads(a.threads)
    settings = settings_from_flags(vars(a))  # the registered evaluation settings' flags
    res = evaluate_checkpoint(a.checkpoint, dataset=a.dataset, split=a.split, root=a.root, ways=a.ways,
                              shots=a.shots, queries=a.queries, episodes=a.episodes, seed=a.seed,
                              meta_batch=a.meta_batch, device=a.device, progress=not a.quiet,
                              imbalance=a.imbalance, **settings)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['dataset']} {res['ways']}-way {res['shots']}-shot, {res['episodes']} episodes (seed "
              f"{res['seed']}): {res['acc']:.2f} +- {res['ci95']:.2f} %")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from metashot.loader import load
    from metashot.predict_folder import predict_images_csv

    # a saved photo classifier predicts without torch (metashot.lite) unless --support fits it again
    clf = load(a.checkpoint, a.device, lite=False if a.support is not None else None)
    fit_cli.check_support(clf, a.support, a.checkpoint)
    if clf.text_encoder is not None:  # text checkpoint: sentence files instead of image folders
        from metashot.text.glue import predict_text_cli

        if given := [f"--{f.replace('_', '-')}" for f in ("resume", "skip_unreadable", "inductive", "unknown")
                     if getattr(a, f)]:
            raise ValueError(f"{', '.join(given)}: for image checkpoints only; leave it out for sentences")
        return predict_text_cli(clf, a.support, a.query, a.output, a.threshold)
    return predict_images_csv(clf, a.support, a.query, a.output, batch_size=a.batch_size, resume=a.resume,
                              skip_unreadable=a.skip_unreadable, transductive=False if a.inductive else None,
                              unknown=a.unknown, threshold=a.threshold)


def _cmd_sinusoid_train(a: argparse.Namespace) -> int:
    """`metashot train` for a config whose dataset is sinusoid (Finn et al. 2017, section 5.1)."""
    from metashot.config import load_config

    dataset = load_config(a.config, a.set).data.dataset
    if dataset != "sinusoid":
        raise ValueError(f"{a.config}: data.dataset is {dataset!r}; `metashot sinusoid train` needs "
                         f"'sinusoid' (use `metashot train` for image datasets)")
    a.resume, a.overwrite = None, False  # a used run folder is refused, as by `metashot train`
    return _cmd_train(a)


def _cmd_sinusoid_eval(a: argparse.Namespace) -> int:
    """Sinusoid MSE after 1/5/10 fine-tuning steps on K points; optional Figure-2-like PNG."""
    from metashot.sinusoid_eval import evaluate_checkpoints

    ca.set_threads(a.threads)
    report = evaluate_checkpoints({"MAML": a.checkpoint, "pretrained": a.baseline}, a.shots, a.steps, a.tasks,
                                  a.queries, a.seed, a.inner_lr, a.plot, a.device)
    print(json.dumps(report, indent=None if a.json else 2))
    return 0


def _cmd_lake(a: argparse.Namespace) -> int:
    from metashot.lake import evaluate_checkpoint, evaluate_mhd, select_runs

    ca.set_threads(a.threads)
    if (a.checkpoint is None) == (a.baseline is None):
        raise ValueError("give either a CHECKPOINT or --baseline mhd (not both)")
    runs = select_runs(a.root, a.val, a.runs)
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
    from metashot.runs import RunDir

    if a.config is None and a.resume is None:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run with its own config")
    if a.config is not None:
        cfg = load_rl_config(a.config, a.set)
    else:
        raw = RunDir(a.resume).read_config()
        cfg = RLConfig.from_dict(apply_overrides(raw, a.set), source=str(a.resume))
    check_device(cfg.train.device, "train.device")
    summary = train_rl(cfg, progress=not a.quiet, resume=a.resume)
    print(json.dumps(summary))
    return ca.exit_code(summary)


def _cmd_rl_eval(a: argparse.Namespace) -> int:
    from metashot.rl.evaluation import draw, evaluate_policies, load_policies, parse_step_sizes, returns_line

    ca.set_threads(a.threads)
    if not a.checkpoints and not a.random:
        raise ValueError("eval: give one or more CHECKPOINTs and/or --random")
    loaded = load_policies(a.checkpoints, a.random, a.random_seed, a.env)
    step_sizes = parse_step_sizes(a.lr_of, [label for label, *_ in loaded])
    show = None if a.json else lambda label, res: print(returns_line(label, res))
    report = evaluate_policies(loaded, step_sizes, a.inner_lr, a.tasks, a.trajectories, a.steps, a.seed, show)
    report.update(draw(report, loaded, a.plot, a.paper_reference, a.plot_trajectories))
    if a.json:
        for r in report.values():
            if isinstance(r, dict):
                r.pop("per_task_returns", None)
        print(json.dumps(report))
    return 0


def _cmd_app(a: argparse.Namespace) -> int:
    """The local page (Gradio, the ``app`` extra) on 127.0.0.1 until Ctrl+C."""
    from metashot.app import launch

    if not a.max_photo_mb > 0:
        raise ValueError(f"--max-photo-mb must be > 0, got {a.max_photo_mb:g}")
    launch(port=a.port, device=a.device, max_photo_mb=a.max_photo_mb)
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    """The bundled checkpoints: a table of name, domain and measured figure; --long: every card field."""
    from metashot.cards import models_table
    from metashot.classifier import bundled_models

    rows = bundled_models()
    if a.json:
        print(json.dumps(rows))
    else:
        print("\n".join(models_table(rows, a.long)))
    return 0


def _cmd_data_verify(a: argparse.Namespace) -> int:
    from metashot.data.verify import print_report

    return print_report(a.root, a.json)


# The parser as a table: (command path, help, function, [(flag, add_argument keywords)]).
_SET = ("--set", dict(action="append", default=[], metavar="KEY=VALUE", help=SET_HELP))
_QUIET = ("--quiet", dict(action="store_true", help=QUIET_HELP))
_DEVICE = ("--device", dict(default="cpu"))
_JSON = ("--json", dict(action="store_true"))
_GROUPS = {"sinusoid": "sinusoid regression (MAML section 5.1): train / eval",
           "rl": "meta-reinforcement learning (MAML-TRPO): train / eval", "data": "dataset utilities"}
COMMANDS: list[tuple[tuple[str, ...], str, Any, list[tuple[str, dict[str, Any]]]]] = [
    (("models",), "the bundled models: domain, input, training data and measured figure", _cmd_models, [
        ("--long", dict(action="store_true", help="every field of each card (domain, input, training, "
                        "measured figure) and its folder, instead of the table")),
        ("--json", dict(action="store_true", help="print one JSON list of {name, card, path}"))]),
    (("train",), "meta-train from a YAML config", _cmd_train, [
        ("config", dict(nargs="?", help="YAML config (optional with --resume: the run's own config)")),
        ("--resume", dict(metavar="RUN_DIR",
                          help="continue the run in RUN_DIR from its last/ checkpoint, bit-for-bit")),
        ("--overwrite", dict(action="store_true", help="start afresh in a run folder that holds an earlier "
                             "run, deleting its checkpoints (without it, such a folder is refused)")),
        _SET, _QUIET]),
    (("eval",), "accuracy +- 95%% CI on fixed seeded episodes", _cmd_eval, [
        ("checkpoint", dict(help="checkpoint folder, run folder or bundled name")),
        ("--dataset", dict(help="dataset to evaluate on, e.g. omniglot, mini_imagenet, flowers102, folder "
                                "(default: the checkpoint's training dataset)")),
        ("--split", dict(help="split to evaluate on (default: the config's test split)")),
        ("--root", dict(help="data root (default $METASHOT_DATA, else ~/.cache/metashot/data)")),
        ("--ways", dict(type=ca.positive_int, help="classes per episode (default: the config's eval.ways; "
                        f"with --dataset folder, the folder's class count up to {ca.FOLDER_MAX_WAYS})")),
        ("--shots", dict(type=ca.positive_int, help="labelled examples per class in each support set "
                                                  "(default: the config's eval.shots)")),
        ("--queries", dict(type=ca.positive_int, help="query examples per class in each episode (default: "
                                                    "the config's eval.queries)")),
        ("--episodes", dict(type=ca.positive_int, help="number of fixed test episodes (default: the config's "
                            "eval.episodes; 1000 on Omniglot, the ProtoNet paper's protocol)")),
        ("--seed", dict(type=ca.seed, help="seed of the test episodes: the same seed gives the same episodes "
                                       "(default: the config's eval.seed)")),
        ("--meta-batch", dict(type=ca.positive_int, help="episodes per forward pass (default: the config's "
                              "eval.meta_batch); lower it when a large setting (e.g. a Relation Net at 20 "
                              "ways) does not fit in memory")),
        ("--device", dict(default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")),
        ("--threads", dict(type=ca.positive_int,
                           help="CPU threads of PyTorch (default: PyTorch's own choice)")),
        ("--json", dict(action="store_true",
                        help="print one JSON object (acc and ci95 in percent) instead of a sentence")),
        ("--quiet", dict(action="store_true", help=QUIET_HELP + "; bars are drawn on stderr, so --json "
                                                                "output on stdout is unaffected")),
        ("--imbalance", dict(type=ca.dirichlet, metavar="dirichlet:ALPHA", help="realistic queries: each "
                             "episode's class proportions drawn from Dirichlet(ALPHA), the total fixed at "
                             "ways x queries, at least one per class (Veilleux et al. 2021; default: "
                             "balanced)")), *eval_flags()]),
    (("predict",), "classify an image or a folder of images (or sentences) from a support set",
     _cmd_predict, [
        ("checkpoint", {}),
        ("--support", dict(help="folder of class subfolders with a few images each (text checkpoints: a "
                            "UTF-8 CSV with text,label columns); optional for a saved classifier")),
        ("--query", dict(required=True, help="an image file or a folder of images to classify (text check"
                         "points: a CSV with a text column, or a text file with one sentence per line)")),
        ("--threshold", dict(type=ca.threshold, help="text checkpoints: label 'oos' (out of scope) when the "
                                              "confidence is below this; photo models: label 'unknown' when "
                                              "the known-class score (cosine to the nearest class mean) is "
                                              "below this (implies --unknown; default: the model's own "
                                              "threshold, set on validation classes)")),
        ("--output", dict(help="CSV file (default: standard output); an existing one needs --resume")),
        ("--batch-size", dict(type=ca.positive_int, default=256, help="at most this many photos are decoded, "
                              "classified and written together (default 256; chunks of near-equal size); "
                              "sets memory. With a transductive head each chunk is one unlabelled batch")),
        ("--resume", dict(action="store_true", help="continue --output: skip the files it already has a row "
                          "for (a cut last line is rewritten) and append the rest")),
        ("--skip-unreadable", dict(action="store_true", help="go on without unreadable images: one warning, "
                                   "and a row with an empty label and the note 'unreadable' each")),
        ("--inductive", dict(action="store_true", help="classify each photo alone, never from the batch")),
        ("--unknown", dict(action="store_true", help="label 'unknown' the photos that look like none of the "
                           "support classes (their known-class score is below the model's threshold, set on "
                           "validation classes to reject 10%% of known photos); they are also kept out of "
                           "the transductive batch")),
        _DEVICE, _QUIET]),
    (("plot",), "PNG learning curves of a run (needs matplotlib: metashot[plot])", _cmd_plot, [
        ("run_dir", dict(help="run folder with metrics.jsonl")),
        ("--output", dict(help="PNG file (default RUN_DIR/learning_curves.png)"))]),
    (("sinusoid", "train"), "meta-train a MAML-family learner (config with dataset sinusoid)",
     _cmd_sinusoid_train, [("config", {}), _SET, _QUIET]),
    (("sinusoid", "eval"), "MSE after fine-tuning on K points with 1/5/10 steps (Table 2)",
     _cmd_sinusoid_eval, [
        ("checkpoint", dict(help="MAML checkpoint (run folder or checkpoint folder)")),
        ("--baseline", dict(help="a pretrained-on-all-tasks checkpoint (inner_steps=0) to compare")),
        ("--shots", dict(type=int, default=5)), ("--steps", dict(type=int, nargs="+", default=[1, 5, 10])),
        ("--tasks", dict(type=int, default=600)), ("--queries", dict(type=int, default=100)),
        ("--seed", dict(type=ca.seed, default=4321)),
        ("--inner-lr", dict(type=float, help="override the fine-tuning step size")),
        ("--plot", dict(help="write a Figure-2-like PNG here (needs matplotlib)")),
        _DEVICE, ("--threads", dict(type=int)), _JSON]),
    (("lake",), "error rate on Lake et al.'s 20-way within-alphabet one-shot runs", _cmd_lake, [
        ("checkpoint", dict(nargs="?", help="checkpoint folder, run folder or bundled name")),
        ("--baseline", dict(choices=["mhd"], help="training-free baseline instead of a checkpoint")),
        ("--root", dict(help="data root holding omniglot/all_runs.zip (default $METASHOT_DATA)")),
        ("--runs", dict(type=int, help="only the first RUNS runs (default: all 20)")),
        ("--val", dict(action="store_true", help="the 50 validation runs from the held-out background "
                       "alphabets instead of Lake's 20 test runs (choose models on these)")),
        _DEVICE, ("--threads", dict(type=int)),
        ("--json", dict(action="store_true", help="print one JSON object (error in percent)"))]),
    (("rl", "train"), "meta-train a policy from a YAML config (configs/*-trpo-*.yaml)", _cmd_rl_train, [
        ("config", dict(nargs="?", help="YAML config (optional with --resume)")),
        ("--resume", dict(metavar="RUN_DIR", help="continue the run in RUN_DIR from last/")), _SET, _QUIET]),
    (("rl", "eval"), "average return on new tasks after 0, 1, 2, 3 adaptation steps", _cmd_rl_eval, [
        ("checkpoints", dict(nargs="*", metavar="CHECKPOINT", help="run folders or checkpoint folders")),
        ("--random", dict(action="store_true", help="also evaluate a randomly initialised policy")),
        ("--random-seed", dict(type=ca.seed, default=0)),
        ("--env", dict(default="navigation2d", help="environment for --random without a checkpoint")),
        ("--tasks", dict(type=int, help="number of test tasks (default: the config's, 40)")),
        ("--trajectories", dict(type=int, help="trajectories per task and step (default 40)")),
        ("--steps", dict(type=int, help="adaptation steps (default: the config's, 3)")),
        ("--inner-lr", dict(type=float, nargs="+",
                            help="step size per adaptation step (the last repeats), for every policy")),
        ("--lr-of", dict(action="append", default=[], metavar="LABEL=LR[,LR...]", help="step sizes of one "
                         "policy (label: its folder name, or random-init); repeatable")),
        ("--seed", dict(type=ca.seed, help="seed of the test tasks (default: the config's)")),
        ("--threads", dict(type=int, default=1)),
        ("--plot", dict(help="PNG of return vs adaptation steps (needs matplotlib)")),
        ("--paper-reference", dict(action="store_true", help="draw the paper's rows (2D navigation: MAML, "
                                                             "pretrained, random, oracle)")),
        ("--plot-trajectories", dict(help="PNG of 2D-navigation trajectories before/after adaptation of the "
                                          "first checkpoint")), _JSON]),
    (("data", "verify"), "which datasets are present and whether they check out", _cmd_data_verify, [
        ("--root", dict(help="data root (default $METASHOT_DATA)")), _JSON]),
    (("app",), "a local page on 127.0.0.1 to try it in the browser: photos, text intents, drawings (needs "
               "metashot[app])", _cmd_app, [
        ("--port", dict(type=ca.positive_int, help="default: the first free port from 7860")),
        ("--max-photo-mb", dict(type=float, default=25.0, help="largest photo accepted, in MB (default 25)")),
        _DEVICE]),
    *fit_cli.COMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metashot", description="Meta-learning and few-shot learning.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for path, help_, func, args in COMMANDS:
        parent = sub
        if len(path) == 2:  # `metashot GROUP COMMAND`
            if path[0] not in groups:
                group = sub.add_parser(path[0], help=_GROUPS[path[0]])
                groups[path[0]] = group.add_subparsers(dest=f"{path[0]}_command", required=True)
            parent = groups[path[0]]
        c = parent.add_parser(path[-1], help=help_)
        for flag, kwargs in args:
            c.add_argument(flag, **kwargs)
        c.set_defaults(func=func)
    return p


def _message(e: Exception) -> str:
    """The error's one line; an evaluation setting the learner refuses is named by its flag."""
    from metashot.evaluate import OverrideError

    if isinstance(e, OverrideError) and setting_flag(e.name):
        return f"{setting_flag(e.name)} {e.reason}"
    return os_error_line(e) if isinstance(e, OSError) else str(e)


def main(argv: list[str] | None = None) -> Any:
    parser = build_parser()
    a = parser.parse_args(argv)
    quiet_before = os.environ.get("METASHOT_QUIET")
    if a.__dict__.get("quiet"):  # every bar honours it, also those of the data and text modules
        os.environ["METASHOT_QUIET"] = "1"
    try:
        check_device(a.__dict__.get("device"), "--device")
        with one_line_warnings(f"metashot {a.command}"):  # no file name or source line
            rc = a.func(a)
        sys.stdout.flush()  # a closed pipe (metashot ... | head) shows up here, not at interpreter exit
        return rc
    except BrokenPipeError:
        # The reader of our stdout went away: send what is still buffered to /dev/null, so Python's final
        # flush raises no second BrokenPipeError (the recipe of Python's signal documentation).
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C outside a training loop, or a second one inside it: no traceback
        if a.__dict__.get("debug"):
            raise
        said = str(e) or "interrupted"
        print(f"metashot {a.command}: stopped: {said}"
              f"{'; the checkpoints written before it are intact' if 'second signal' in said else ''}",
              file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
    except (ValueError, OSError, KeyError, TypeError, RuntimeError, ImportError) as e:
        if a.__dict__.get("debug"):
            raise
        print(f"metashot {a.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if quiet_before is None:
            os.environ.pop("METASHOT_QUIET", None)
        else:
            os.environ["METASHOT_QUIET"] = quiet_before


if __name__ == "__main__":
    sys.exit(main())
