"""The Gradio page of ``metashot app``: photos, text intents and drawings, one support set per browser tab.

Every handler turns a mistake into one status line (never a traceback) and leaves the page working. Element
ids (``#class-name``, ``#classify``, ``#gallery``...) are stable: the browser test drives them.

The API (``gradio_client``; see README "Try it in the browser"):

* ``/classify_photos(model, support_zip, queries, unknown)`` -> (rows, csv): a zip of class subfolders, the
  query photos; rows ``{file, label, confidence, flag}``, most confident first, and the CSV file.
* ``/classify_text(model, examples, queries)`` -> rows ``[sentence, intent, confidence]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import metashot.app.extras as extras
from metashot.app.photos import (
    MAX_PHOTO_MB,
    AppError,
    ModelCache,
    PhotoSession,
    add_photos,
    classify,
    gather,
    load_saved,
    one_line,
    save_zip,
    thumbnail,
    write_csv,
)


def model_choices() -> dict[str, list[str]]:
    """The bundled models by tab: photos (RGB), drawings (grayscale), text (a sentence encoder)."""
    import json

    from metashot.classifier import bundled_models

    out: dict[str, list[str]] = {"photos": [], "drawings": [], "text": []}
    for row in bundled_models():
        try:
            meta = json.loads(open(os.path.join(row["path"], "config.json")).read())
        except (OSError, ValueError):
            continue
        spec, data = meta.get("image_spec"), (meta.get("config") or {}).get("data") or {}
        if spec:
            out["photos" if spec.get("channels") == 3 else "drawings"].append(row["name"])
        elif meta.get("text_encoder") or str(data.get("dataset", "")).startswith(("intents", "text")):
            out["text"].append(row["name"])
    return out


def _ok(text: str) -> str:
    return f"✓ {text}"


def _err(e: BaseException) -> str:
    return f"⚠ {one_line(e)}"


def _caption(r: dict[str, Any]) -> str:
    mark = {"unknown": " · unknown", "low confidence": " · ⚠ low confidence"}.get(r["flag"], "")
    return f"{r['label']} · {r['confidence']:.0%}{mark}"


def build_app(device: str = "cpu", max_photo_mb: float = MAX_PHOTO_MB) -> Any:
    """The page as a ``gradio.Blocks`` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    cache = ModelCache(device)
    choices = model_choices()
    photo_models = choices["photos"] or ["photos"]

    def session(s: PhotoSession | None, model: str) -> PhotoSession:
        return s if s is not None else PhotoSession(model=(model or photo_models[0]).strip())

    def on_model(s: PhotoSession | None, model: str) -> tuple[Any, ...]:
        s = session(s, model)
        if model.strip() == s.model:
            return s, s.summary(), gr.update()
        had = len(s.files)
        s.model, s.embeddings, s.files = model.strip(), {}, {}
        what = ("the classes were cleared (their photos were embedded by the other model); add them again"
                if had else "add classes")
        return s, [], _ok(f"Model {s.model}: {what}")

    def on_add(s: PhotoSession | None, model: str, name: str, files: list[str] | None, folder: str,
               progress: Any = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 (Gradio's way)
        s = session(s, model)
        try:
            photos = gather(files, folder, name, s.tmp, max_photo_mb)
            msg = add_photos(s, cache, photos, lambda f, d: progress(f, desc=d))
        except Exception as e:
            return s, s.summary(), _err(e), gr.update(), gr.update()
        return s, s.summary(), _ok(msg), None, ""

    def on_clear(s: PhotoSession | None, model: str) -> tuple[Any, ...]:
        s = session(s, model)
        s.embeddings, s.files = {}, {}
        return s, [], _ok("All classes removed")

    def on_classify(s: PhotoSession | None, model: str, queries: list[str] | None, unknown: bool,
                    progress: Any = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 (Gradio's way)
        s = session(s, model)
        try:
            rows = classify(s, cache, queries, unknown, lambda f, d: progress(f, desc=d), max_photo_mb)
            gallery = [(thumbnail(r["path"], s.tmp), _caption(r)) for r in rows]
            csv_path = write_csv(rows, s.tmp)
        except Exception as e:
            return s, gr.update(), gr.update(), _err(e)
        flagged = sum(1 for r in rows if r["flag"])
        return s, gallery, csv_path, _ok(f"Classified {len(rows)} photos into {len(s.files)} classes"
                                         + (f"; {flagged} marked" if flagged else ""))

    def on_save(s: PhotoSession | None, model: str, with_photos: bool) -> tuple[Any, ...]:
        s = session(s, model)
        try:
            path = save_zip(s, cache, with_photos)
        except Exception as e:
            return gr.update(), _err(e)
        return path, _ok("Saved: download the zip; metashot.load(folder) or `metashot predict FOLDER` reads "
                         "it once unzipped, and this page loads it as it is")

    def on_load(s: PhotoSession | None, model: str, file: str | None, path: str) -> tuple[Any, ...]:
        old = session(s, model)
        try:
            src = file or (path or "").strip()
            if not src:
                raise AppError("drop a saved classifier's zip, or give its folder")
            new = load_saved(cache, src, old.tmp)
        except Exception as e:
            return old, gr.update(), old.summary(), _err(e)
        msg = _ok(f"Loaded {len(new.files)} classes fitted on {new.model}")
        return new, new.model, new.summary(), msg

    def api_classify(model: str, support_zip: str | None, queries: list[str] | None,
                     unknown: bool) -> tuple[list[dict[str, Any]], str]:
        s = PhotoSession(model=(model or photo_models[0]).strip(),
                         tmp=tempfile.mkdtemp(prefix="metashot-api-"))
        try:
            if not support_zip:
                raise AppError("give support_zip: a zip of class subfolders of photos")
            add_photos(s, cache, gather([support_zip], None, "", s.tmp, max_photo_mb))
            rows = classify(s, cache, queries, unknown, None, max_photo_mb)
            csv_path = write_csv(rows, tempfile.mkdtemp(prefix="metashot-api-csv-"))
        except Exception as e:  # the caller gets the one line, as the page shows it
            raise gr.Error(one_line(e), print_exception=False) from e
        finally:
            shutil.rmtree(s.tmp, ignore_errors=True)
        return [{k: r[k] for k in ("file", "label", "confidence", "flag")} for r in rows], csv_path

    def on_text(model: str, examples: str, queries: str) -> tuple[Any, str]:
        try:
            rows = extras.classify_text(cache, model, examples, queries)
        except Exception as e:
            return gr.update(), _err(e)
        return rows, _ok(f"Classified {len(rows)} sentences")

    def api_text(model: str, examples: str, queries: str) -> list[list[Any]]:
        try:
            return extras.classify_text(cache, model, examples, queries)
        except Exception as e:
            raise gr.Error(one_line(e), print_exception=False) from e

    def on_add_drawing(d: extras.DrawingSession | None, name: str, pad: Any) -> tuple[Any, ...]:
        d = d if d is not None else extras.DrawingSession()
        try:
            return d, _ok(d.add(name, pad))
        except Exception as e:
            return d, _err(e)

    def on_classify_drawing(d: extras.DrawingSession | None, model: str, pad: Any) -> tuple[Any, ...]:
        d = d if d is not None else extras.DrawingSession()
        try:
            probs = d.classify(cache, model, pad)
        except Exception as e:
            return d, gr.update(), _err(e)
        best = max(probs, key=probs.get)  # type: ignore[arg-type]
        return d, probs, _ok(f"Looks like {best} ({probs[best]:.0%})")

    private: dict[str, Any] = {"api_visibility": "private"}
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web font: the page works offline
    theme = gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="metashot: few-shot classification") as demo:
        demo.theme = theme
        gr.Markdown("# metashot\nGive a few examples of each class; it classifies the next ones. "
                    "Everything runs on this computer; each browser tab has its own classes.")
        with gr.Tab("Photos"):
            state = gr.State(None, delete_callback=lambda s: s is not None and shutil.rmtree(s.tmp, True))
            with gr.Row():
                model = gr.Dropdown(photo_models, value=photo_models[0], allow_custom_value=True,
                                    label="Model (a bundled name, timm/<model> or a checkpoint folder)",
                                    elem_id="photo-model")
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Class name", placeholder="e.g. mug", elem_id="class-name")
                    photos = gr.File(label="Photos of this class (or a zip of class folders)",
                                     file_count="multiple", elem_id="class-photos")
                    folder = gr.Textbox(label="...or a folder on this computer (subfolders are classes)",
                                        elem_id="class-folder")
                    with gr.Row():
                        add = gr.Button("Add to class", variant="primary", elem_id="add-class")
                        clear = gr.Button("Remove all classes", elem_id="clear-classes")
                    table = gr.Dataframe(headers=["class", "photos"], label="Classes", interactive=False,
                                         elem_id="classes")
                with gr.Column():
                    queries = gr.File(label="Photos to classify", file_count="multiple",
                                      elem_id="query-photos")
                    unknown = gr.Checkbox(label="Mark photos of none of these classes as 'unknown'",
                                          elem_id="unknown")
                    go = gr.Button("Classify", variant="primary", elem_id="classify")
            status = gr.Markdown("Add two or more classes, then drop photos to classify.", elem_id="status")
            gallery = gr.Gallery(label="Predictions (most confident first)", columns=6, height="auto",
                                 elem_id="gallery")
            csv_file = gr.File(label="Predictions as CSV", elem_id="csv")
            with gr.Accordion("Save or load a classifier", open=False):
                with gr.Row():
                    with_photos = gr.Checkbox(label="Include the photos", elem_id="save-photos")
                    save = gr.Button("Save classifier", elem_id="save")
                    saved = gr.File(label="Saved classifier (zip)", elem_id="saved")
                with gr.Row():
                    load_file = gr.File(label="A saved classifier's zip", file_types=[".zip"],
                                        elem_id="load-file")
                    load_path = gr.Textbox(label="...or its folder on this computer", elem_id="load-path")
                    load_btn = gr.Button("Load classifier", elem_id="load")
            model.change(on_model, [state, model], [state, table, status], **private)
            add.click(on_add, [state, model, name, photos, folder], [state, table, status, photos, folder],
                      **private)
            clear.click(on_clear, [state, model], [state, table, status], **private)
            go.click(on_classify, [state, model, queries, unknown], [state, gallery, csv_file, status],
                     **private)
            save.click(on_save, [state, model, with_photos], [saved, status], **private)
            load_btn.click(on_load, [state, model, load_file, load_path], [state, model, table, status],
                           **private)
            with gr.Column(visible=False):  # the API's inputs and outputs (gradio_client), not shown
                api_in = [gr.Textbox(), gr.File(), gr.File(file_count="multiple"), gr.Checkbox()]
                api_out = [gr.JSON(label="rows"), gr.File(label="csv")]
                gr.Button().click(api_classify, api_in, api_out, api_name="classify_photos")
        with gr.Tab("Text intents"):
            text_models = choices["text"] or ["protonet-minilm-intents"]
            tmodel = gr.Dropdown(text_models, value=text_models[0], label="Model", elem_id="text-model")
            examples = gr.Textbox(lines=8, label="Examples, one per line: intent: sentence",
                                  placeholder="greeting: hello there\ngreeting: good morning\n"
                                              "goodbye: see you later\ngoodbye: bye for now",
                                  elem_id="intent-examples")
            tqueries = gr.Textbox(lines=4, label="Sentences to classify, one per line",
                                  elem_id="intent-queries")
            tgo = gr.Button("Classify sentences", variant="primary", elem_id="classify-text")
            tstatus = gr.Markdown("", elem_id="text-status")
            tout = gr.Dataframe(headers=["sentence", "intent", "confidence"], interactive=False,
                                elem_id="intent-results")
            tgo.click(on_text, [tmodel, examples, tqueries], [tout, tstatus], **private)
            with gr.Column(visible=False):
                gr.Button().click(api_text, [gr.Textbox(), gr.Textbox(), gr.Textbox()], gr.JSON(label="rows"),
                                  api_name="classify_text")
        with gr.Tab("Drawings"):
            drawing_models = sorted(choices["drawings"] or ["protonet-omniglot"],
                                    key=lambda n: n != "protonet-omniglot")  # the fastest first
            dstate = gr.State(None)
            dmodel = gr.Dropdown(drawing_models, value=drawing_models[0],
                                 label="Model (handwritten characters)", elem_id="drawing-model")
            with gr.Row():
                pad = gr.Sketchpad(type="numpy", canvas_size=(280, 280), image_mode="RGBA",
                                   brush=gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed"),
                                   label="Draw a character", elem_id="sketch")
                with gr.Column():
                    dname = gr.Textbox(label="Its class", elem_id="drawing-class")
                    dadd = gr.Button("Add drawing to class", elem_id="add-drawing")
                    dgo = gr.Button("Classify drawing", variant="primary", elem_id="classify-drawing")
                    dlabel = gr.Label(label="Prediction", elem_id="drawing-label")
            dstatus = gr.Markdown("Draw a few examples of two or more characters, then one to classify.",
                                  elem_id="drawing-status")
            dadd.click(on_add_drawing, [dstate, dname, pad], [dstate, dstatus], **private)
            dgo.click(on_classify_drawing, [dstate, dmodel, pad], [dstate, dlabel, dstatus], **private)
    return demo


def launch(host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
           max_photo_mb: float = MAX_PHOTO_MB, block: bool = True) -> Any:
    """Start the page on ``host:port`` (default 127.0.0.1 and Gradio's first free port from 7860); returns
    the running ``Blocks`` (its ``local_url``) when ``block`` is False."""
    demo = build_app(device, max_photo_mb)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                max_file_size=f"{max(1, int(max_photo_mb * 4))}mb", show_error=False, ssr_mode=False)
    # No allowed_paths: the page serves only what Gradio copied into its own cache (uploads, the gallery's
    # thumbnails, the CSV), never other files of this computer's temp folder.
    return demo
