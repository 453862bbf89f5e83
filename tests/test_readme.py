"""Every python and bash snippet of README.md runs as written (issue 29 item 9), or is skipped here with its
reason. Each snippet runs in a fresh folder after the runnable snippets before it in its own section (so the
command that unpacks the images runs before the code that reads them); python snippets of a section share
one namespace, bash snippets run with `bash -e` and this interpreter's `metashot` first on PATH. The quick
starts must run: the fast ones in the fast tier, the rest (pretrained photo and text models, 1000 episodes) in
the slow tier. A skip whose snippet no longer exists fails, so this list cannot go stale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# first line of a snippet (a prefix) -> why it is not run here
SKIP = {
    "python3 -m venv .venv": "the set-up itself: makes a virtual environment, installs, trains (minutes)",
    ".venv/bin/python -m pytest -q": "the whole test suite, of which this test is part",
    "metashot --version": "the command reference: trains 2,000 steps on a GPU and names your own "
                          "folders; its commands are tested one by one in tests/test_cli*.py",
    "metashot train configs/photos.yaml": "trains and evaluates the photo model for minutes (RESULTS.md)",
    "metashot train configs/protonet-omniglot-5w1s.yaml --set train.checkpoint_every": "trains (minutes)",
    "torchrun --standalone": "several processes and GPUs",
    "pip install -c constraints.txt": "installs the app extra, then serves the page until Ctrl+C (tests/app)",
    "from gradio_client import": "talks to a running `metashot app` page; tests/app/test_app_api.py runs it "
                                 "against one",
    "metashot train configs/maml-omniglot-5w1s.yaml": "meta-trainings of minutes to hours",
    "metashot rl train": "meta-RL trainings of minutes",
    "metashot eval protonet-minilm-intents --dataset banking77": "encodes BANKING77's test fold with "
                                                                "MiniLM on its first use (minutes)",
}
# first line of a snippet (a prefix) -> runs in the fast tier (well under 10 s)
FAST = {"python -m zipfile -e", "import glob"}


def snippets() -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every python and bash block, in README order."""
    out, section = [], ""
    for m in re.finditer(r"^(## [^\n]*)$|^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M):
        if m.group(1):
            section = m.group(1)
        elif m.group(2) in ("python", "bash"):
            out.append((section, m.group(2), m.group(3)))
    return out


def _first(code: str) -> str:
    return code.strip().splitlines()[0]


def _match(table: dict[str, str] | set[str], code: str) -> str | None:
    return next((k for k in table if _first(code).startswith(k)), None)


def _make_photo_files(folder: Path) -> None:
    """The photos the photo quick start names, from Flowers-102 in the shared data: my_photos/<class>/ (5
    each), new_photos/ (3), and the loose files of its Python snippets (a third class for partial_fit)."""
    data = Path(os.environ["METASHOT_DATA"]) / "flowers102" / "flowers102_odd.zip"
    with zipfile.ZipFile(data) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})[:3]
        files = {c: [n for n in names if n.split("/")[1] == c] for c in classes}
        for (label, c) in zip(("mug", "kettle"), classes[:2], strict=True):
            for i, n in enumerate(files[c][:5]):
                (folder / "my_photos" / label).mkdir(parents=True, exist_ok=True)
                (folder / "my_photos" / label / f"{i}.jpg").write_bytes(z.read(n))
        (folder / "new_photos").mkdir()
        for i, n in enumerate(files[classes[0]][5:7] + files[classes[1]][5:6]):
            (folder / "new_photos" / f"IMG_{i}.jpg").write_bytes(z.read(n))
        loose = {"mug1.jpg": files[classes[0]][7], "mug2.jpg": files[classes[0]][8],
                 "kettle1.png": files[classes[1]][7], "kettle2.png": files[classes[1]][8],
                 "photo_041.jpg": files[classes[0]][9],
                 "teapot1.jpg": files[classes[2]][0], "teapot2.jpg": files[classes[2]][1]}
        for name, n in loose.items():  # a .png name holding JPEG bytes: Pillow reads by content
            (folder / name).write_bytes(z.read(n))


def _run(section: str, lang: str, code: str, folder: Path, namespace: dict) -> None:
    if lang == "python":
        exec(compile(code, f"README.md ({section})", "exec"), namespace)  # noqa: S102 - the README's own code
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", "-e", "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"README ({section}) bash snippet failed:\n{code}\n{r.stdout[-2000:]}" \
                              f"{r.stderr[-2000:]}"


ALL = snippets()
CASES = [pytest.param(i, id=f"{i}:{_first(code)[:40]}",
                      marks=[] if _match(FAST, code) else [pytest.mark.slow])
         for i, (_, _, code) in enumerate(ALL) if not _match(SKIP, code)]


@pytest.mark.parametrize("index", CASES)
def test_readme_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             data_root: Path) -> None:
    section = ALL[index][0]
    monkeypatch.chdir(tmp_path)
    if "photos" in section:
        _make_photo_files(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i in range(index + 1):  # the runnable snippets before it in its section, then itself
        sec, lang, code = ALL[i]
        if sec == section and not _match(SKIP, code):
            _run(sec, lang, code, tmp_path, namespace)


def test_every_snippet_is_run_or_skipped_with_a_reason() -> None:
    firsts = [_first(code) for _, _, code in ALL]
    stale = [k for k in SKIP if not any(f.startswith(k) for f in firsts)]
    assert not stale, f"SKIP names snippets README.md no longer has: {stale}"
    quick = [code for sec, _, code in ALL if "Quick start" in sec]
    assert quick and not any(_match(SKIP, code) for code in quick), "the quick starts must run"
