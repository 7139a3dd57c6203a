"""`editgan-fast serve` as a user runs it: a subprocess bound to 127.0.0.1 serving the page and the API."""
import subprocess
import sys
import time

import httpx

from editgan_fast import cli
from editgan_fast.serve.local import free_port

START_TIMEOUT_S = 120


def test_serve_command_serves_page_and_api(tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "editgan_fast.cli", "serve", "--quiet", "--port", str(port),
                                "--library", str(tmp_path / "library")], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                info = httpx.get(f"{url}/api/v1/info", timeout=5).json()
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "editgan-fast serve did not answer in time"
                time.sleep(0.2)
        assert info["class_names"][5] == "mouth" and info["resolution"] == 64
        assert "/static/app.js" in httpx.get(url, timeout=30).text
        assert "sendScales" in httpx.get(f"{url}/static/app.js", timeout=30).text
        assert (tmp_path / "library").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_bad_options_exit_2(capsys):
    assert cli.main(["serve", "--segmenter", "x.pth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editgan-fast: error:") and "--checkpoint" in err and "Traceback" not in err
