"""Plain progress lines on stderr (ulm.progress): throttled by share done and by time, a final line always."""

import io
import re

import numpy as np
import pytest

from ulm.progress import progress_log


class FakeClock:
    """A clock that the test sets (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_loop(n: int, seconds_per_item: float) -> list[str]:
    """The lines written for a loop over ``n`` items taking ``seconds_per_item`` each (no bar)."""
    clock, out = FakeClock(), io.StringIO()
    for i in progress_log(range(n), desc="sparsify threshold", unit="block", enabled=False, clock=clock, file=out):
        clock.now = (i + 1) * seconds_per_item
    return out.getvalue().splitlines()


def counts(lines: list[str]) -> list[int]:
    return [int(re.match(r"sparsify threshold: (\d+)/", line)[1]) for line in lines]


def test_slow_loop_writes_a_line_every_tenth_and_a_final_one():
    lines = run_loop(50, seconds_per_item=2.0)  # 10 % = 5 items = 10 s, over the 5 s minimum
    assert counts(lines) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert lines[0] == "sparsify threshold: 5/50 blocks (10%), 10.0 s elapsed, ~1.5 min left"
    assert lines[-1] == "sparsify threshold: 50/50 blocks (100%), 1.7 min elapsed"


def test_fast_loop_is_throttled_by_time():
    # 1000 items at 0.1 s: 10 % (100 items) takes 10 s, so lines come every 10 % (not every 5 s nor every item)
    assert counts(run_loop(1000, seconds_per_item=0.1)) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    # 1000 items at 0.01 s: 10 % takes 1 s, so the 5 s minimum spaces the lines: 500 items apart
    lines = run_loop(1000, seconds_per_item=0.01)
    assert counts(lines) == [500, 1000]
    assert lines[0] == "sparsify threshold: 500/1000 blocks (50%), 5.0 s elapsed, ~5.0 s left"


def test_quick_loop_writes_only_the_final_line():
    lines = run_loop(48, seconds_per_item=0.001)
    assert lines == ["sparsify threshold: 48/48 blocks (100%), 0.0 s elapsed"]


def test_empty_loop_still_writes_its_final_line():
    assert run_loop(0, seconds_per_item=1.0) == ["sparsify threshold: 0/0 blocks (100%), 0.0 s elapsed"]


def test_lines_are_written_with_the_bar_shown_too():
    """With the tqdm bar enabled the same lines come (through tqdm.write, which keeps the bar intact)."""
    out = io.StringIO()
    clock = FakeClock()
    for _ in progress_log(range(20), desc="sparsify threshold", unit="block", enabled=True, clock=clock, file=out):
        clock.now += 1.0
    lines = [line for line in out.getvalue().replace("\r", "\n").splitlines() if "elapsed" in line]
    expected = [f"sparsify threshold: {n}/20 blocks ({5 * n}%), {n}.0 s elapsed, ~{20 - n}.0 s left" for n in (5, 10, 15)]
    assert lines == [*expected, "sparsify threshold: 20/20 blocks (100%), 20.0 s elapsed"]
    assert "|" in out.getvalue()  # and the bar was drawn


def test_update_api_with_total_and_an_early_stop():
    clock, out = FakeClock(), io.StringIO()
    with progress_log(total=8192, desc="bubbles", unit="frame", enabled=False, clock=clock, file=out) as bar:
        for _ in range(3):  # 3 chunks of 1024 frames, 30 s each
            clock.now += 30.0
            bar.update(1024)
        bar.set_postfix(loss="0.1")
        clock.now += 2.0
        bar.update(100)  # too soon after the last line: none, then the loop stops early
    assert out.getvalue().splitlines() == [
        "bubbles: 1024/8192 frames (12%), 30.0 s elapsed, ~3.5 min left",
        "bubbles: 2048/8192 frames (25%), 1.0 min elapsed, ~3.0 min left",
        "bubbles: 3072/8192 frames (37%), 1.5 min elapsed, ~2.5 min left",
        "bubbles: 3172/8192 frames (38%), 1.5 min elapsed",  # closed early: the final line says where it stopped
    ]


def test_final_line_is_not_repeated_when_closed_after_the_total():
    clock, out = FakeClock(), io.StringIO()
    bar = progress_log(total=3, desc="forward 2D psf", unit="block", enabled=False, clock=clock, file=out)
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["forward 2D psf: 3/3 blocks (100%), 0.0 s elapsed"]


def test_an_error_ends_the_lines_without_a_final_one():
    """A stage that fails prints one error line (ulm.cli): no progress line may follow the last throttled one."""
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(ValueError):
        for i in progress_log(range(10), desc="targets", unit="block", enabled=False, clock=clock, file=out):
            clock.now = 3.0 * i
            if i == 4:
                raise ValueError("bad block")
    with pytest.raises(ValueError), progress_log(total=10, desc="sparsify topk", unit="block", enabled=False, file=out) as bar:
        bar.update(3)
        raise ValueError("bad block")
    assert out.getvalue().splitlines() == ["targets: 3/10 blocks (30%), 6.0 s elapsed, ~14.0 s left"]


def test_a_stage_writes_its_lines_to_stderr_even_when_quiet(capsys):
    """The call sites pass ``enabled=not --quiet``: the bar goes, the lines stay."""
    from ulm.render import _count_time_blocks

    class Store:  # two time blocks of one tile each
        origin = np.array([[0, 0, 0], [128, 0, 0]])

    _count_time_blocks(Store(), lambda b: np.array([[b, 0]]), (2, 2), "render pred", False, None)
    assert re.fullmatch(r"render pred: 2/2 blocks \(100%\), \d+\.\d s elapsed\n", capsys.readouterr().err)


def test_unknown_total_is_throttled_by_time_alone():
    clock, out = FakeClock(), io.StringIO()
    with progress_log(desc="infer", unit="block", enabled=False, clock=clock, file=out) as bar:
        for _ in range(12):
            clock.now += 1.0
            bar.update(1)
    assert out.getvalue().splitlines() == [
        "infer: 5 blocks, 5.0 s elapsed",
        "infer: 10 blocks, 10.0 s elapsed",
        "infer: 12 blocks, 12.0 s elapsed",
    ]
