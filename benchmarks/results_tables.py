"""Regenerate, from the JSONL records under results/, every RESULTS.md table that has records (Markdown).

    python benchmarks/results_tables.py                      # all tables
    python benchmarks/results_tables.py --check RESULTS.md   # and say which rows RESULTS.md holds

Each table is printed under a heading naming its RESULTS.md section and its record files. A table whose
records are missing says so instead. ``--check`` looks for every generated row's figures, in order, in one
table line of RESULTS.md (bold, percent signs and thousands separators ignored) and lists the rows it does not
find. Figures are printed with the digits the records hold (no half-way case is rounded away).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

R = Path("results")
Row = tuple[list[str], list[str]]  # (label cells, value cells)
Table = tuple[list[str], list[Row], list[str]]  # (header, rows, notes)
TEXT_FIGURES = "(figures quoted in the section's text, not a table there)"
# Two-sided 95% quantiles of Student's t by degrees of freedom (t-intervals over seeds or runs).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 49: 2.010}


def read(*names: str) -> list[dict]:
    """JSON records of results/<name> (JSONL, or one JSON object); [] for a missing file."""
    out: list[dict] = []
    for name in names:
        p = R / name
        if not p.is_file():
            continue
        text = p.read_text()
        if p.suffix == ".json":
            out.append(json.loads(text))
        else:
            out += [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def pm(acc: float, ci: float) -> str:
    return f"{acc:.2f} +- {ci:.2f}"


# ----- photos, calibration, ResNet-12, MAML speed -----------------------------------------------------------

PHOTO_CONFIGS = {"configs/photos-frozen-lite0.yaml": "frozen backbone, cosine prototypes",
                 "configs/photos-simpleshot-lite0.yaml": "SimpleShot CL2N, mini-ImageNet base mean",
                 "configs/photos.yaml": "photos (bundled)"}
PHOTO_SETS = [("mini_imagenet/test", 1), ("mini_imagenet/test", 5), ("flowers102/all", 1),
              ("flowers102/all", 5), ("flowers102/test", 1), ("flowers102/test", 5)]


def photos_test() -> Table | None:
    recs = read("photos/test.jsonl")
    if not recs:
        return None
    by = {(r["config"], r["dataset"], r["shots"]): r for r in recs}
    rows = []
    for cfg, label in PHOTO_CONFIGS.items():
        cells = [pm(by[(cfg, d, s)]["acc"], by[(cfg, d, s)]["ci95"]) if (cfg, d, s) in by else "-"
                 for d, s in PHOTO_SETS]
        rows.append(([f"{label} (`{cfg}`)"], cells))
    res = {r["shots"]: r for r in read("resnet12/eval.jsonl")}
    if res:
        rows.insert(0, (["ProtoNet, ResNet-12 CPU preset"],
                        [pm(res[s]["acc"], res[s]["ci95"]) if s in res else "-" for s in (1, 5)] + ["-"] * 4))
    head = ["model", "mini-ImageNet test 1-shot", "5-shot", "Flowers all 1-shot", "5-shot",
            "Flowers test 1-shot", "5-shot"]
    return head, rows, ["Baseline++ row: no record (its command is in the section)."]


def photos_selection() -> Table | None:
    recs = read("photos/selection.jsonl")
    if not recs:
        return None
    speed = {(r["model"], r["input_size"]): r["network_s_25_plus_75"]
             for r in read("photos/candidates_speed.jsonl")}
    cands: dict[tuple[str, int, str], dict[tuple[str, int], float]] = {}
    for r in recs:
        cands.setdefault((r["model"], r["input_size"], r["head"]), {})[(r["dataset"], r["shots"])] = r["acc"]
    keys = [("mini_imagenet/val", 1), ("mini_imagenet/val", 5), ("flowers102/val", 1), ("flowers102/val", 5)]
    rows = []
    for (model, size, head), acc in cands.items():
        if any(k not in acc for k in keys):
            continue
        name = model.replace("tf_efficientnet_", "").replace("lite", "Lite").replace("+", " + ")
        s = speed.get((model, size))
        vals = [f"{acc[k]:.2f}" for k in keys] + [f"{sum(acc[k] for k in keys) / 4:.2f}",
                                                  "-" if s is None else f"{s:.3f}"]
        rows.append(([f"{name}, {size}", head], vals))
    notes = ["RESULTS.md leaves the Lite1 240 px rows with heads other than pt-supc to these records"]
    return ["backbone, input", "head", "mini val 1-shot", "5-shot", "Flowers val 1-shot", "5-shot", "mean",
            "network s, 25+75"], rows, notes


def photos_speed() -> Table | None:
    recs = read("photos/speed.jsonl")
    if not recs:
        return None
    r = recs[-1]
    notes = [f"in the text: embedding {r['embed_images_per_s']} images/s, metashot.load('photos') "
             f"{r['load_s']} s, peak resident memory {r['peak_rss_mib']} MiB"]
    return (["photos", "fit 25 + predict 75, s (median of 5)"],
            [(["Flowers-102 JPEGs as shipped (128x128)"], [f"{r['fit25_predict75_s_jpeg128']:.2f}"]),
             (["the same enlarged to 12 megapixels"], [f"{r['fit25_predict75_s_phone12mp']:.2f}"])], notes)


def calibration() -> Table | None:
    recs = read("calibration/protonet-omniglot.json")
    if not recs:
        return None
    t = recs[0]["test"]
    rows = [([label], [f"{t[k]['ece_percent']:.3f}", f"{t[k]['nll']:.4f}", f"{t[k]['mean_confidence']:.4f}",
                       f"{t[k]['acc_percent']:.3f}"])
            for label, k in (("T = 1 (before)", "before"), (f"T = {recs[0]['temperature']}", "after"))]
    return ["", "ECE %", "NLL", "mean confidence", "accuracy %"], rows, []


def resnet12() -> Table | None:
    res = {r["shots"]: r for r in read("resnet12/eval.jsonl")}
    if not res:
        return None
    return ["5-way 1-shot", "5-way 5-shot"], [([], [pm(res[s]["acc"], res[s]["ci95"]) for s in (1, 5)])], []


def maml_l2l() -> Table | None:
    """Medians over the interleaved rounds, the ratio of the medians, and the range of the per-round ratios
    (a round: one run of each variant, in file order)."""
    recs = read("maml/l2l_side_by_side_A.jsonl")
    if not recs:
        return None
    runs: dict[tuple[bool, str], list[float]] = {}
    iters: dict[str, set[int]] = {}
    for r in recs:
        ours = "bn-bwd" if r.get("analytic_bn") else "plain"
        who = "l2l" if r["benchmark"] == "maml-learn2learn" else ours
        runs.setdefault((r["first_order"], who), []).append(r["tasks_per_s"])
        iters.setdefault("l2l" if who == "l2l" else "ours", set()).add(r["iters"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = []
    for fo, ours, label in ((False, "plain", "second order"),
                            (True, "bn-bwd", "first order (the batch norm with a hand-written backward)")):
        per_round = [a / b for a, b in zip(runs[(fo, ours)], runs[(fo, "l2l")], strict=True)]
        rows.append(([label], [f"{med[(fo, ours)]:.2f}", f"{med[(fo, 'l2l')]:.2f}",
                               f"{med[(fo, ours)] / med[(fo, 'l2l')]:.2f}x",
                               f"{min(per_round):.2f}-{max(per_round):.2f}x"]))
    notes = [f"other medians: second order with the hand-written batch-norm backward "
             f"{med.get((False, 'bn-bwd'), float('nan')):.2f}, first order with the plain formula "
             f"{med.get((True, 'plain'), float('nan')):.2f} tasks/s ({len(runs[(False, 'l2l')])} rounds); "
             f"timed iterations per run: metashot {sorted(iters['ours'])}, "
             f"learn2learn {sorted(iters['l2l'])}"]
    head = ["A", "metashot, tasks/s", "learn2learn, tasks/s", "ratio of medians", "per-round ratios"]
    return head, rows, notes


def maml_compile() -> Table | None:
    recs = read("maml/compile_cpu.jsonl")
    if not recs:
        return None
    rows = [([f"round {i // 2 + 1}", "compiled" if r["compile"] else "eager",
              f"{r['results']['maml']['warmup_s']:.1f}"], [f"{r['results']['maml']['ms_per_step']:.1f}"])
            for i, r in enumerate(recs)]
    return ["round", "mode", "warm-up s (compile included)", "ms per step"], rows, [TEXT_FIGURES]


# ----- text -----------------------------------------------------------------------------------------------

DATASETS = ("banking77", "clinc150", "hwu64")


def text_episodic() -> Table | None:
    recs = read("text/episodic.jsonl", "text/episodic_gradient.jsonl", "text/episodic_matching.jsonl")
    summ = {(r["method"], r["shots"], r["dataset"]): r for r in recs if r.get("summary")}
    if not summ:
        return None
    rows = []
    for method, shots in sorted({(m, s) for m, s, _ in summ}, key=lambda x: (x[1], x[0])):
        cells = []
        for d in DATASETS:
            r = summ.get((method, shots, d))
            cells += ["-", "-"] if r is None else [pm(r["acc"], r["ci95"]), f"{r['fold_std']:.2f}"]
        rows.append(([method, str(shots)], cells))
    head = ["method", "shots"] + [c for d in DATASETS for c in (d, "fold sd")]
    return head, rows, ["mean of the 5 fold accuracies +- 95% CI of the 3,000 pooled episodes; fold sd: "
                        "population standard deviation of the 5 fold accuracies (the records' fold_std)"]


def text_inner_lr4() -> Table | None:
    recs = [r for r in read("text/maml_inner_lr4_fold1.jsonl") if not r.get("summary")]
    if not recs:
        return None
    rows = [([r["dataset"], str(r["shots"])], [f"{r['best_val_acc']:.2f}", pm(r["acc"], r["ci95"])])
            for r in recs]
    return ["dataset", "shots", "best validation acc", "fold-1 test acc"], rows, []


def _fullway_label(r: dict) -> str:
    if r["method"] != "finetune-top" or not r.get("ft_folds"):
        return r["method"]
    return f"finetune-top, {r['ft_folds']} held-out fold" + ("s" if r["ft_folds"] > 1 else "")


# Test-set sizes of the full-way protocol (all test sentences) and the published figures quoted beside ours:
# Zhang et al. 2021 (CPFT, EMNLP 2021), the 5-/10-shot table; RoBERTa-base classifier and USE+ConveRT rows as
# that paper reports them. Their run counts and spread are not in our records (see RESULTS.md).
FULLWAY_TEST = {"banking77": 3080, "clinc150": 4500, "hwu64": 1076}
PUBLISHED = [("RoBERTa classifier (published)", 5, (74.04, 87.99, 75.56)),
             ("USE+ConveRT (published)", 5, (77.75, 90.49, 80.01)),
             ("CPFT (published)", 5, (80.86, 92.34, 82.03)),
             ("CPFT (published)", 10, (87.20, 94.18, 87.13))]


def _acc_ci(acc: float, n: int) -> str:
    """A test-set accuracy with its exact binomial 95% interval: the count of correct sentences is recovered
    from the two-decimal percentage (unique for n < 10,000)."""
    from metashot.stats import binomial_ci

    k = round(acc * n / 100)
    lo, hi = binomial_ci(k, n)
    return f"{acc:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def text_fullway() -> Table | None:
    """The full-way table: every method at seed 0 (the finetune-top rows from the seed runs' seed-0 lines),
    each figure with its binomial 95% interval over the test sentences; the published rows likewise."""
    recs = read("text/fullway.jsonl", "text/fullway_ft10.jsonl", "text/fullway_seeds.jsonl")
    full = {(_fullway_label(r), r["shots"], r["dataset"]): r["acc"] for r in recs
            if r.get("protocol") == "fullway" and r.get("seed", 0) == 0}
    if not full:
        return None
    rows = [([m, str(k)], [_acc_ci(full[(m, k, d)], FULLWAY_TEST[d]) if (m, k, d) in full else "-"
                           for d in DATASETS])
            for m, k in sorted({(m, k) for m, k, _ in full}, key=lambda x: (x[1], x[0]))]
    rows += [([m, str(k)], [_acc_ci(a, FULLWAY_TEST[d]) for a, d in zip(accs, DATASETS, strict=True)])
             for m, k, accs in PUBLISHED]
    notes = ["accuracy over all test sentences (3,080 / 4,500 / 1,076) [exact binomial 95% interval]; for "
             "a published row, the interval its figure would have on the same test set from one run"]
    if not (R / "text" / "fullway_ft10.jsonl").is_file():
        notes.append("no record for the finetune-top 10-shot row: results/text/fullway_ft10.jsonl not found")
    return ["method", "K", *DATASETS], rows, notes


def text_seeds() -> Table | None:
    """finetune-top, both selection protocols, one row per dataset and protocol: each seed, mean and sd."""
    recs = [r for r in read("text/fullway_seeds.jsonl")
            if r.get("protocol") == "fullway" and r.get("method") == "finetune-top"]
    if not recs:
        return None
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["dataset"], r["shots"], r["ft_folds"]), []).append(r)
    rows = []
    for (d, k, folds), rs in sorted(groups.items(), key=lambda g: (DATASETS.index(g[0][0]), g[0][1:])):
        rs = sorted(rs, key=lambda r: r["seed"])
        accs = [r["acc"] for r in rs]
        sd = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "-"
        mean = statistics.mean(accs)
        half = T975[len(accs) - 1] * statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else None
        tci = "-" if half is None else f"[{mean - half:.2f}, {mean + half:.2f}]"
        rows.append(([d, str(k), f"{folds} fold" + ("s" if folds > 1 else "")],
                     [", ".join(f"{r['acc']:.2f}" for r in rs), f"{mean:.2f}", sd, tci,
                      str(len(rs)), "; ".join(f"{r['lr']:g}, {r['steps']}" for r in rs)]))
    return (["dataset", "K", "selection", "test acc per seed (0, 1, 2)", "mean", "sd", "95% t-interval",
             "seeds", "lr, steps chosen per seed"], rows,
            ["sd: sample standard deviation over the seeds (n - 1); t-interval: mean +- t(0.975, n - 1) sd / "
             "sqrt(n), n seeds"])


def text_oos() -> Table | None:
    oos = [r for r in read("text/fullway.jsonl") if r.get("protocol") == "oos"]
    if not oos:
        return None
    rows = [([r["method"], str(r["shots"])], [f"{r['threshold']:.3f}", f"{r['in_scope_acc']:.2f}",
                                              f"{r['oos_recall']:.2f}", f"{r['oos_precision']:.2f}"])
            for r in sorted(oos, key=lambda r: (r["shots"], r["method"]))]
    return ["method", "K", "threshold", "in-scope acc", "OOS recall", "OOS precision"], rows, []


def text_bundled() -> Table | None:
    bundled = {(r["dataset"].split("/")[0], r["shots"]): r for r in read("text/bundled_eval.jsonl")}
    fold1 = {(r["method"], r["dataset"], r["shots"]): r for r in read("text/episodic.jsonl")
             if r.get("fold") == 1}
    if not bundled:
        return None
    cols = [(d, s) for d in DATASETS for s in (1, 5)]
    def fold1_row(method: str) -> list[str]:
        return [pm(fold1[(method, d, s)]["acc"], fold1[(method, d, s)]["ci95"]) for d, s in cols]

    rows = [(["ncm (no training)"], fold1_row("ncm")),
            (["protonet-minilm-intents (bundled)"], [pm(bundled[c]["acc"], bundled[c]["ci95"])
                                                     for c in cols]),
            (["protonet, trained per dataset and shot"], fold1_row("protonet"))]
    return ["fold 1, 5-way"] + [f"{d} {s}-shot" for d, s in cols], rows, []


def text_speed() -> Table | None:
    sp, enc = read("text/speed.jsonl"), read("text/encode_all.jsonl")
    if not sp and not enc:
        return None
    rows = []
    if enc:
        n, s = sum(r["sentences"] for r in enc), sum(r["encode_seconds"] for r in enc)
        rows.append((["encode all parts: sentences, encoding s (wall, summed), ms/sentence"],
                     [f"{n}", f"{s:.1f}", f"{1000 * s / n:.2f}"]))
    if sp:
        r = sp[-1]
        rows += [(["encode 1,000 sentences: CPU s, wall s, load average"],
                  [f"{r['encode_cpu_s_per_1000']}", f"{r['encode_wall_s_per_1000']}",
                   f"{r['load_average_1min']}"]),
                 (["load a cached store, s"], [f"{r['cached_store_load_s']}"]),
                 (["cached episodes/s, 5-way 1-shot / 5-shot"], [f"{r['episodes_per_s_5w1s']}",
                                                                 f"{r['episodes_per_s_5w5s']}"])]
    return ["what", "figures"], rows, []


# ----- issue 18: batch-norm mode, Omniglot protocols --------------------------------------------------------

def bn_mode() -> Table | None:
    recs = read("bn/protonet-omniglot.jsonl")
    if not recs:
        return None
    rows = [([r["checkpoint"], r["bn"]], [f"{r['acc']:.2f} +- {r['ci95']:.2f}"]) for r in recs]
    return ["checkpoint", "batch norm", "test 5-way 1-shot"], rows, []


def omniglot_protocols() -> Table | None:
    recs = read("omniglot/protocols.jsonl")
    if not recs:
        return None
    rows = [([r["checkpoint"], r["protocol"], str(r["classes"])], [pm(r["acc"], r["ci95"])]) for r in recs]
    return ["checkpoint", "protocol", "classes", "test 5-way 1-shot"], rows, []


def _ci(wrong: int, trials: int) -> str:
    from metashot.stats import binomial_ci

    lo, hi = binomial_ci(wrong, trials)
    return f"{100 * wrong / trials:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def lake_validation() -> Table | None:
    recs = read("lake/val.jsonl")
    if not recs:
        return None
    rows = [([r["train_set"], r["candidate"], str(r["episodes"])],
             [f"{r['wrong']}/{r['val_trials']}", _ci(r["wrong"], r["val_trials"]),
              f"{r['train_seconds']:.0f}"]) for r in recs]
    head = ["training set", "candidate", "episodes", "wrong", "val error % [95% CI]", "train wall s"]
    return head, rows, []


def lake_test() -> Table | None:
    recs = read("lake/test.jsonl")
    if not recs:
        return None
    rows = [([r["train_set"], r["chosen"]], [_ci(r["test_wrong"], r["test_trials"]),
                                             f"({r['test_wrong']}/{r['test_trials']})"]) for r in recs]
    return ["training set", "chosen on validation", "test error % [95% CI]", "(test wrong)"], rows, []


METALSTM_ABLATION = {"paper": "paper gate initialisation, 5 queries/class (the old recipe)",
                     "gate01": "input gate starts at about 0.1",
                     "gate01-q15": "the same, 15 queries/class in meta-training",
                     "gate01-nobn": "the same as gate01, learner without batch norm (stopped at step 750)"}


def metalstm_ablation() -> Table | None:
    rows = []
    for key, label in METALSTM_ABLATION.items():
        recs = read(f"metalstm/mlstm-abl-{key}-metrics.jsonl")
        if not recs:
            continue
        val = {r["step"]: pm(r["val_acc"], r["val_ci95"]) for r in recs if "val_acc" in r}
        rows.append(([key, label], [val.get(s, "-") for s in (500, 1000, 1500)]))
    if not rows:
        return None
    return ["run", "variant", "val @500", "val @1000", "val @1500"], rows, []


def metalstm_bundled() -> Table | None:
    test, recs = read("metalstm/bundled-test.json"), read("metalstm/bundled-metrics.jsonl")
    if not test or not recs:
        return None
    val = [r for r in recs if "val_acc" in r]
    best = max(val, key=lambda r: r["val_acc"])  # the first of equal maxima, as the trainer keeps
    curve = ", ".join(f"{r['val_acc']:.2f}" for r in val)
    return (["checkpoint", "validation (best)", "test 5-way 1-shot"],
            [([f"best/ = step {best['step']}"], [pm(best["val_acc"], best["val_ci95"]),
                                                 pm(test[0]["acc"], test[0]["ci95"])])],
            [f"validation every {val[1]['step'] - val[0]['step']} steps: {curve}"])


CURVES = {"metasgd": ("Meta-SGD, 3,000 steps", 99.53),
          "reptile": ("Reptile, 2,000 steps (cosine over the 2,000)", 97.68)}


def learning_curves() -> Table | None:
    """Validation accuracy at 250 / 500 / 1,000 / 2,000 / 3,000 steps and the final test figure."""
    rows = []
    for key, (label, paper) in CURVES.items():
        recs, test = read(f"curves/{key}-metrics.jsonl"), read(f"curves/{key}-test.json")
        if not recs or not test:
            continue
        val = {r["step"]: r["val_acc"] for r in recs if "val_acc" in r}
        rows.append(([label], [" / ".join(f"{val[s]:.2f}" if s in val else "-" for s in (250, 500, 1000, 2000,
                                                                                          3000)),
                               pm(test[0]["acc"], test[0]["ci95"]), f"{paper}"]))
    if not rows:
        return None
    return ["run", "validation accuracy at 250 / 500 / 1,000 / 2,000 / 3,000 steps", "test 5-way 1-shot",
            "paper"], rows, []


def curve_slopes() -> Table | None:
    """The log-linear fit of each curve's last four validation points: slope (points per tenfold increase of
    steps) with its 95% t-interval (2 residual degrees of freedom), and where the fit line meets the paper."""
    import math

    rows = []
    for key, (label, paper) in CURVES.items():
        ex = read(f"curves/{key}-extrapolation.json")
        if not ex:
            continue
        pts = [(math.log10(s), a) for s, a in ex[0]["val_points"] if s in ex[0]["fit_on_steps"]]
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in pts)
        half = T975[n - 2] * math.sqrt(resid / (n - 2) / sxx)
        rows.append(([label.split(",")[0]], [f"{slope:.3f}", f"[{slope - half:.2f}, {slope + half:.2f}]",
                                             f"{ex[0]['steps_to_target_loglinear']:,}", f"{paper}"]))
    if not rows:
        return None
    return ["run", "points per decade", "95% t-interval", "steps where the line meets the paper", "paper"], \
        rows, []


def _coordinates() -> dict[str, int]:
    """Coordinates per learner tensor, from the header of the bundled Meta-LSTM checkpoint (both models share
    the architecture)."""
    import math
    import struct

    with Path("src/metashot/weights/metalstm-omniglot/weights.safetensors").open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {k: math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"}


GATES = {"gates-test-bundled.json": "bundled, test split", "gates-val-bundled.json": "bundled, val split",
         "gates-val-old-bundled.json": "old (-paper.yaml), val split"}


def metalstm_gates() -> Table | None:
    """The learned input gate per inner step (coordinate-weighted mean over the learner's tensors; per-tensor
    range at t = 1 and t = 5), the forget gate's range, and what the LSTM reads (median |gradient|, share of
    coordinates in the preprocessing's linear branch, support loss) at steps 1 and 5."""
    rows = []
    size = _coordinates()
    for name, label in GATES.items():
        recs = read(f"metalstm/{name}")
        if not recs:
            continue
        g, grad = recs[0]["gates"], recs[0]["gradients"]
        total = sum(size[k] for k in g)
        mean = [sum(size[k] * v["input"][t] for k, v in g.items()) / total for t in range(5)]
        first, last = [v["input"][0] for v in g.values()], [v["input"][-1] for v in g.values()]
        forget = [f for v in g.values() for f in v["forget"]]
        loss = grad["support_loss"]
        rows.append(([label], [", ".join(f"{m:.3f}" for m in mean), f"{min(first):.3f}-{max(first):.3f}",
                               f"{min(last):.3f}-{max(last):.3f}", f"{min(forget):.4f}-{max(forget):.4f}",
                               f"{grad['median_abs_grad'][0]:.3f} / {grad['median_abs_grad'][-1]:.1e}",
                               f"{100 * grad['linear_branch_fraction'][0]:.1f} / "
                               f"{100 * grad['linear_branch_fraction'][-1]:.0f}",
                               f"{loss[0]:.3g} / {loss[1]:.2g}"]))
    if not rows:
        return None
    return (["model, split (100 episodes)", "input gate, t = 1..5", "per tensor t = 1", "per tensor t = 5",
             "forget gate", "median abs gradient t = 1 / 5", "% linear branch t = 1 / 5",
             "support loss before / after update 1"], rows, [])


def rl_fine_grid() -> Table | None:
    recs = read("rl/test_fine_grid.jsonl")
    if not recs:
        return None
    rows = [([r["policy"], f"{r['inner_lr'][0]}, {r['inner_lr'][1]}"],
             [pm(m, c) for m, c in zip(r["returns"], r["ci95"], strict=True)]) for r in recs]
    return ["policy", "steps (fine grid)", "0 steps", "1 step", "2 steps", "3 steps"], rows, []


TABLES: list[tuple[str, str, Callable[[], Table | None]]] = [
    ("Photos: test table", "photos/test.jsonl, resnet12/eval.jsonl", photos_test),
    ("Photos: the choice (validation)", "photos/selection.jsonl, photos/candidates_speed.jsonl",
     photos_selection),
    ("Photos: speed", "photos/speed.jsonl", photos_speed),
    ("MAML on the CPU against learn2learn (part 4)", "maml/l2l_side_by_side_A.jsonl", maml_l2l),
    ("MAML: torch.compile on the CPU", "maml/compile_cpu.jsonl", maml_compile),
    ("Calibration of protonet-omniglot", "calibration/protonet-omniglot.json", calibration),
    ("ResNet-12 on the mini-ImageNet sample", "resnet12/eval.jsonl", resnet12),
    ("Prototypical Networks on Omniglot: batch-norm mode", "bn/protonet-omniglot.jsonl", bn_mode),
    ("Prototypical Networks on Omniglot: the two protocols", "omniglot/protocols.jsonl", omniglot_protocols),
    ("Text: speed", "text/encode_all.jsonl, text/speed.jsonl", text_speed),
    ("Lake: candidates on the validation runs", "lake/val.jsonl", lake_validation),
    ("Lake: the chosen models on the official runs", "lake/test.jsonl", lake_test),
    ("2D navigation: fine step-size grid, pretrained and random init", "rl/test_fine_grid.jsonl",
     rl_fine_grid),
    ("Meta-LSTM on Omniglot: the bundled model", "metalstm/bundled-*.json*", metalstm_bundled),
    ("Meta-LSTM on Omniglot: the ablation (validation)", "metalstm/mlstm-abl-*-metrics.jsonl",
     metalstm_ablation),
    ("Meta-LSTM: the learned gates and what the LSTM reads", "metalstm/gates-*.json", metalstm_gates),
    ("Meta-SGD and Reptile: learning curves", "curves/*-metrics.jsonl, curves/*-test.json", learning_curves),
    ("Meta-SGD and Reptile: log-linear fit of the last four validation points", "curves/*-extrapolation.json",
     curve_slopes),
    ("Text: Protocol 1, episodic", "text/episodic*.jsonl", text_episodic),
    ("Text: MAML inner rate 4.0, fold 1", "text/maml_inner_lr4_fold1.jsonl", text_inner_lr4),
    ("Text: Protocol 2, full-way", "text/fullway*.jsonl", text_fullway),
    ("Text: finetune-top over seeds, both selection protocols", "text/fullway_seeds.jsonl", text_seeds),
    ("Text: out-of-scope detection", "text/fullway.jsonl", text_oos),
    ("Text: the bundled protonet-minilm-intents", "text/bundled_eval.jsonl, text/episodic.jsonl",
     text_bundled),
]

NUM = re.compile(r"-?\d+(?:\.\d+)?")


def numbers(text: str) -> list[str]:
    return NUM.findall(re.sub(r"(?<=\d),(?=\d{3})", "", text.replace("**", "")))


def found(values: list[str], lines: list[list[str]]) -> bool:
    """Do the figures of ``values`` occur, in this order (not necessarily adjacent), in one of ``lines``?"""
    want = numbers(" ".join(values))

    def within(line: list[str]) -> bool:
        it = iter(line)
        return all(any(tok == w for tok in it) for w in want)

    return not want or any(within(line) for line in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="RESULTS_MD", help="look for every generated row in this file")
    a = ap.parse_args()
    tables: list[list[str]] = []
    every: list[list[str]] = []
    if a.check:
        text = Path(a.check).read_text().splitlines()
        tables = [numbers(ln) for ln in text if ln.startswith("|")]
        every = [numbers(ln) for ln in text]
    for title, source, fn in TABLES:
        print(f"#### {title} (results/{source})\n")
        table = fn()
        if table is None:
            print("no records found\n")
            continue
        head, rows, notes = table
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for labels, values in rows:
            print("| " + " | ".join(labels + values) + " |")
        for note in notes:
            print(f"\n{note}")
        if a.check:
            lines = every if TEXT_FIGURES in notes else tables
            miss = [" | ".join(lab + val) for lab, val in rows if not found(val, lines)]
            print(f"\ncheck: {len(rows) - len(miss)} of {len(rows)} rows found in {a.check}"
                  + "".join(f"\n  not found: {m}" for m in miss))
        print()


if __name__ == "__main__":
    main()
