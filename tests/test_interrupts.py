"""Signals are held inside TensorFlow work and raised at safe points: real signals sent to this process."""

import os
import signal
import time

import pytest

from nerf_pipeline.runtime import interrupts


@pytest.fixture
def installed():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    interrupts._depth, interrupts._pending = 0, None


def send(sig=signal.SIGTERM):
    os.kill(os.getpid(), sig)
    time.sleep(0.2)  # the handler runs at the next bytecode; a sleep is cut short by it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_outside_held_a_signal_raises_at_once(installed, sig):
    with pytest.raises(KeyboardInterrupt):
        send(sig)


def test_inside_held_a_signal_waits_for_check(installed):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            send()
            reached.append("after the signal")
            interrupts.check()
            reached.append("after check")
    assert reached == ["after the signal"]
    interrupts.check()  # raised once, then forgotten


def test_a_held_signal_is_raised_when_the_block_ends(installed):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            with interrupts.held():  # nested: only the outermost block's end raises
                send()
            reached.append("inner block ended")
    assert reached == ["inner block ended"]


def test_a_second_signal_raises_at_once(installed):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            send()
            reached.append("first held")
            send()
            reached.append("second held")
    assert reached == ["first held"]


def test_another_error_leaving_the_block_drops_the_held_signal(installed):
    with pytest.raises(ValueError):
        with interrupts.held():
            send()
            raise ValueError("a user mistake found mid-way")
    with interrupts.held():
        interrupts.check()  # nothing left over from the first block
