"""The ``metashot`` command: train, eval, predict, data verify."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch


def _cmd_train(a: argparse.Namespace) -> int:
    from metashot.config import load_config
    from metashot.train import train_from_config

    cfg = load_config(a.config, a.set)
    summary = train_from_config(cfg, progress=not a.quiet)
    print(json.dumps(summary))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from metashot.checkpoint import load_checkpoint
    from metashot.data import load_split
    from metashot.evaluate import OMNIGLOT_EPISODES, evaluate

    if a.threads:
        torch.set_num_threads(a.threads)
    learner, meta = load_checkpoint(a.checkpoint, a.device)
    cfg = meta["config"]
    data, ev = cfg["data"], cfg["eval"]
    dataset = a.dataset or data["dataset"]
    split = a.split or data["test_split"]
    episodes = a.episodes or (OMNIGLOT_EPISODES if dataset == "omniglot" else ev["episodes"])
    store = load_split(dataset, split, a.root or data.get("root"), data.get("image_size"),
                       **(data.get("options") or {}) if dataset == data["dataset"] else {})
    res = evaluate(learner, store, a.ways or ev["ways"], a.shots or ev["shots"],
                   a.queries or ev["queries"], episodes, a.seed if a.seed is not None else ev["seed"],
                   ev.get("meta_batch", 16), a.device, progress=not a.json)
    res["checkpoint"] = str(a.checkpoint)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['dataset']} {res['ways']}-way {res['shots']}-shot, {res['episodes']} episodes (seed "
              f"{res['seed']}): {res['acc']:.2f} +- {res['ci95']:.2f} %")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from metashot.classifier import load
    from metashot.data.folder import IMAGE_SUFFIXES, list_folder

    clf = load(a.checkpoint, a.device)
    classes = list_folder(Path(a.support))
    images, labels = [], []
    for name, files in classes.items():
        images += files
        labels += [name] * len(files)
    clf.fit(images, labels)
    q = Path(a.query)
    if not q.is_dir():
        raise FileNotFoundError(f"query folder {q} does not exist")
    queries = sorted(p for p in q.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not queries:
        raise ValueError(f"query folder {q} holds no images")
    proba = clf.predict_proba(queries)
    out = open(a.output, "w", newline="") if a.output else sys.stdout
    w = csv.writer(out)
    w.writerow(["file", "label", "confidence"])
    for f, p in zip(queries, proba):
        k = int(p.argmax())
        w.writerow([str(f), clf.classes_[k], f"{p[k]:.4f}"])
    if a.output:
        out.close()
    return 0


def _cmd_data_verify(a: argparse.Namespace) -> int:
    from metashot.data.verify import verify_all

    report = verify_all(a.root)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            print(f"{name:28s} {r['status']:8s} {r.get('detail', '')}")
    return 0 if all(r["status"] in ("ok", "missing") for r in report.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metashot", description="Meta-learning and few-shot learning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="accuracy +- 95%% CI on fixed seeded episodes")
    e.add_argument("checkpoint", help="checkpoint folder, run folder or bundled name")
    e.add_argument("--dataset")
    e.add_argument("--split", help="split to evaluate on (default: the config's test split)")
    e.add_argument("--root", help="data root (default $METASHOT_DATA)")
    e.add_argument("--ways", type=int)
    e.add_argument("--shots", type=int)
    e.add_argument("--queries", type=int)
    e.add_argument("--episodes", type=int)
    e.add_argument("--seed", type=int)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int)
    e.add_argument("--json", action="store_true", help="print one JSON object (acc and ci95 in percent)")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="classify a folder of images from a support folder of class subfolders")
    pr.add_argument("checkpoint")
    pr.add_argument("--support", required=True, help="folder of class subfolders with a few images each")
    pr.add_argument("--query", required=True, help="folder of images to classify")
    pr.add_argument("--output", help="CSV file (default: standard output)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_cmd_predict)

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
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError) as e:
        if a.__dict__.get("debug"):
            raise
        print(f"metashot {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
