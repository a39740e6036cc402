"""run_isolated: a child's answer, its exception, or how it died (a signal)."""

import os
import signal

import pytest

from vocabtrim.errors import VocabtrimError
from vocabtrim.isolate import Crashed, run_isolated


def answer(x: int) -> int:
    return x * 2


def refuse(msg: str) -> None:
    raise VocabtrimError(msg)


def die(sig: int) -> None:
    os.kill(os.getpid(), sig)


def test_answer_exception_and_death():
    assert run_isolated(answer, 21) == 42
    with pytest.raises(VocabtrimError, match="no such file"):
        run_isolated(refuse, "no such file")
    with pytest.raises(Crashed, match="SIGSEGV"):
        run_isolated(die, signal.SIGSEGV)
    with pytest.raises(Crashed, match="exit status 3"):
        run_isolated(os._exit, 3)
