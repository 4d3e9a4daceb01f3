"""`spillover report`'s own rules, without Prometheus (tests/e2e/test_observability.py draws a real
episode): durations, the stretches of overflow it shades, a picture even where a panel has no data, and
one line instead of a traceback where matplotlib is not installed (the image has no extras)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spillover.dashboards.queries import STATE_CODES
from spillover.dashboards.report import Episode, ReportError, Series, draw, parse_duration
from spillover.policy import OverflowState
from tests.harness.ports import free_port

T0 = 1_800_000_000.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400),
                                                ("2d", 172800), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "-5m", "0s", "1m1h"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ReportError, match=r"duration such as 90s|longer than 0s"):
        parse_duration(text)


def states(*codes: int, step: float = 1.0) -> Series:
    return Series("m", tuple((T0 + i * step, float(code)) for i, code in enumerate(codes)))


def episode(series: Series, end: float | None = None) -> Episode:
    return Episode(model="m", name="m", start=T0, end=end or series.points[-1][0] + 1, step=1.0, states=(series,))


def test_stretches_of_overflow_and_failover_last_until_the_next_state() -> None:
    over, fail, calm = (STATE_CODES[s] for s in (OverflowState.OVERFLOW, OverflowState.FAILOVER, OverflowState.STANDBY))
    spans = episode(states(calm, over, over, over, calm, fail, fail, calm)).spans()
    assert spans == [(OverflowState.OVERFLOW, T0 + 1, T0 + 4), (OverflowState.FAILOVER, T0 + 5, T0 + 7)]


def test_a_gap_in_the_data_splits_a_stretch() -> None:
    over = STATE_CODES[OverflowState.OVERFLOW]
    series = Series("m", ((T0, over), (T0 + 1, over), (T0 + 10, over)))
    assert len(episode(series, end=T0 + 20).spans()) == 2


def test_a_panel_without_data_is_drawn_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "episode.png"
    layout = draw(episode(states(0, 1, 1, 0)), out)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert (layout.width, layout.height) == (1400, 1200)
    assert set(layout.panels) == {"metric", "share", "requests", "rate_limited"}
    tops = [layout.panels[name][1] for name in ("metric", "share", "requests", "rate_limited")]
    assert tops == sorted(tops)  # one under the other, in that order


def test_without_matplotlib_the_report_says_how_to_get_it(tmp_path: Path) -> None:
    # A None entry in sys.modules makes `import matplotlib` fail as it does where it is not installed.
    out = tmp_path / "episode.png"
    program = ("import sys; sys.modules['matplotlib'] = None; from spillover.cli import main; "
               "raise SystemExit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", program, "report", "--prometheus-url", f"http://127.0.0.1:{free_port()}",
         "--model", "m", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "spillover report: drawing needs matplotlib: pip install 'spillover[report]'"
    ]
    assert not out.exists()
