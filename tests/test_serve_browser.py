"""The page in a real browser: Debian's headless Chromium (driven by Playwright, no browser download) against a
real uvicorn on 127.0.0.1. It paints a stroke, learns a vector, drags its slider, and checks the displayed
image changed and equals the API's render at the slider's value; then uploads a photo, embeds it and pastes the
edit back at the photo's resolution. Screenshots: out/serve_page.png, out/serve_page_photo.png."""
import base64
import io as _io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editgan_fast import assets, io
from editgan_fast.editor import default_editor
from editgan_fast.serve import create_app
from editgan_fast.serve.local import serving

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup-browser)"),
              pytest.mark.filterwarnings("ignore:no LPIPS weights")]
OUT = Path(__file__).resolve().parents[1] / "out"
TIMEOUT_MS = 60_000
MOUTH = 5


def decode(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(_io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))).astype(int)


PHOTO_SIZE = (160, 120)


def photo_png(editor) -> bytes:
    """A 'photo': a generated face on a larger canvas of another colour."""
    face = io.tensor_to_pil(editor.render(editor.sample(8)).image).resize((110, 110))
    canvas = Image.new("RGB", PHOTO_SIZE, (40, 90, 160))
    canvas.paste(face, (25, 5))
    buffer = _io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def test_page_paints_learns_and_slides():
    editor = default_editor(progress=False)
    names = assets.manifest()["classes"]
    with tempfile.TemporaryDirectory() as library, serving(create_app(editor, library, class_names=names)) as url, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 760})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=TIMEOUT_MS)
            page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
            before = decode(page.get_attribute("#image", "src"))

            # A mouth-coloured stroke across the lower face (the label canvas is 320 px for 64 labels).
            page.click(f".swatch[data-cls='{MOUTH}']")
            assert page.text_content("#brush-name") == "mouth"
            box = page.locator("#labels").bounding_box()
            page.mouse.move(box["x"] + 130, box["y"] + 222)
            page.mouse.down()
            for i in range(12):
                page.mouse.move(box["x"] + 130 + 5 * i, box["y"] + 226, steps=2)
            page.mouse.up()
            page.fill("#learn-steps", "4")
            page.fill("#vector-name", "bigmouth")
            page.click("#learn")
            slider = page.locator("#vectors input[type=range]")
            slider.wait_for(timeout=TIMEOUT_MS)
            assert page.text_content("#job-status") == "learned bigmouth"
            assert page.get_attribute("#preview", "src").startswith("data:image/png")

            # Drag the slider's thumb towards its right end, then wait for the frame of that value.
            rect = slider.bounding_box()
            page.mouse.move(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
            page.mouse.down()
            page.mouse.move(rect["x"] + rect["width"] * 0.85, rect["y"] + rect["height"] / 2, steps=8)
            page.mouse.up()
            scale = float(slider.input_value())
            assert scale > 1.0
            page.wait_for_function("s => document.getElementById('image').dataset.scales === s",
                                   arg=f'{{"bigmouth":{scale:g}}}', timeout=TIMEOUT_MS)
            shown = decode(page.get_attribute("#image", "src"))
            session = page.evaluate("state.session.id")
            api = page.evaluate("""async ([sid, scale]) => {
                const r = await fetch(`/api/v1/sessions/${sid}/apply`, {method: "POST",
                    headers: {"content-type": "application/json"}, body: JSON.stringify({scales: {bigmouth: scale}})});
                return (await r.json()).frames[0].image; }""", [session, scale])
            expected = decode("data:image/png;base64," + api)
            assert np.abs(shown - before).mean() > 1.0, "the slider did not change the displayed image"
            assert np.abs(shown - expected).max() <= 1, "the displayed frame differs from the API's render"
            OUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUT / "serve_page.png"))

            # A photo: crop (the default centred square), embed, paste the edit back at full resolution.
            page.set_input_files("#photo-file", {"name": "photo.png", "mimeType": "image/png",
                                                 "buffer": photo_png(editor)})
            page.wait_for_selector("#crop-dialog[open]", timeout=TIMEOUT_MS)
            page.fill("#embed-steps", "2")
            page.click("#embed")
            page.wait_for_selector("#paste-row:not([hidden])", timeout=TIMEOUT_MS)
            page.click("#paste")
            page.wait_for_function("() => document.getElementById('composite').naturalWidth > 0",
                                   timeout=TIMEOUT_MS)
            assert page.evaluate("[composite.naturalWidth, composite.naturalHeight]") == list(PHOTO_SIZE)
            page.screenshot(path=str(OUT / "serve_page_photo.png"))
            assert errors == []
        finally:
            browser.close()
