"""Progress bars (tqdm) and the package's log messages."""
import io
import logging

import pytest
import torch

import editgan_fast
from editgan_fast import cli
from editgan_fast.editor import random_editor
from editgan_fast.editor.progress import ProgressBar, enabled


def test_bar_shows_steps_rate_and_loss():
    stream = io.StringIO()
    bar = ProgressBar("refine", 4, stream=stream)
    for step in range(5):  # the editor's last pass (step == total) only evaluates
        bar.update(step, {"total": 1.0 / (step + 1)})
    bar.close()
    text = stream.getvalue()
    assert "refine" in text and "4/4" in text and "loss=0.2" in text and ("step/s" in text or "s/step" in text)


def test_bars_only_in_terminals_unless_asked():
    assert enabled(None) is False  # pytest's captured stderr is not a terminal
    assert enabled(True) is True and enabled(False) is False


def _fit(editor, steps):
    start = torch.zeros(editor.generator.num_ws, editor.generator.style_dim)
    target = torch.randn_like(start)

    def objective(wplus):
        total = (wplus - target).square().mean()
        return total, {"total": total.detach()}, None

    return editor._optimize("fit", start, objective, steps, 0.1, None)


@pytest.mark.parametrize("progress", [None, True])
def test_editor_draws_a_bar_only_when_asked_outside_a_terminal(capsys, progress):
    _fit(random_editor(0, progress=progress), steps=3)
    err = capsys.readouterr().err
    assert ("fit" in err and "3/3" in err) is bool(progress)


def test_cli_logs_the_package_messages_to_stderr(capsys):
    logger = logging.getLogger("editgan_fast")
    handlers, level = list(logger.handlers), logger.level
    try:
        cli._configure_logging(quiet=False)
        cli._configure_logging(quiet=False)  # configuring twice adds no second handler
        logging.getLogger("editgan_fast.editor.editor").info("embed: resized")
        assert capsys.readouterr().err == "editgan-fast: embed: resized\n"
        cli._configure_logging(quiet=True)
        logging.getLogger("editgan_fast.editor.editor").info("embed: resized")
        assert capsys.readouterr().err == ""
    finally:
        logger.handlers[:], logger.level = handlers, level


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"editgan-fast {editgan_fast.__version__}"
