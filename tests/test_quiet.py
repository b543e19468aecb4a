"""Third-party chatter stays out of the user's terminal: what `distilswap` prints is ours."""
import subprocess
import sys

LOG_BOTH = """
import logging
from facekit.quiet import configure_logging
configure_logging({verbose}, ["distill"])
logging.getLogger("onnxscript.optimizer").info("third-party pass log")
logging.getLogger("onnxscript").warning("third-party warning")
logging.getLogger("distill.train").info("our progress line")
"""


def _stderr(code: str, *flags: str) -> str:
    done = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_third_party_info_logs_are_hidden_unless_verbose_ours_are_shown():
    quiet = _stderr(LOG_BOTH.format(verbose=False))
    assert "our progress line" in quiet and "third-party warning" in quiet and "third-party pass log" not in quiet
    assert "third-party pass log" in _stderr(LOG_BOTH.format(verbose=True))


def test_counting_macs_raises_no_deprecation_warning_from_fvcore():
    code = ("import torch\nfrom student.complexity import count_macs\n"
            "print(count_macs(torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),)).fvcore_macs)")
    assert "FutureWarning" not in _stderr(code, "-W", "error::FutureWarning")
