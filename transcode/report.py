"""How an ingest shows itself: a live progress bar on a terminal, plain log
lines otherwise, and the closing summary table."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from transcode.entries import Entry, IngestOutcome, IngestReport


class Progress:
    """A `progress(report, done, total)` callback for `Ingest`.

    On a terminal: a tqdm bar with files, frames, MB/s and ETA. Elsewhere
    (a cron job, a log file): one line every `every` seconds and at the end.
    A `total` of None is unknown (a PACS that does not count a study's
    instances): files are counted, with no ETA; a total that proves too
    low (a count made before more instances arrived) gives an ETA of zero.
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self.bar: tqdm | None = None
        self.started = time.monotonic()
        #: When the last line was printed; None until the first, which comes
        #: with the first file (the monotonic clock counts from boot, so no
        #: number stands for "never").
        self.last: float | None = None

    def __call__(self, report: IngestReport, done: int, total: int | None) -> None:
        frames, mb = report.frames, report.bytes(None)[0] / 1e6
        rate = mb / max(time.monotonic() - self.started, 1e-9)
        if self.stream.isatty():
            if self.bar is None:
                self.bar = tqdm(total=total, unit="file", file=self.stream, dynamic_ncols=True)
            self.bar.set_postfix_str(f"{frames} frames, {rate:.1f} MB/s", refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done and (self.last is None or now - self.last >= self.every or done == total):
            self.last = now
            counted, eta = f"{done} files", ""
            if total is not None:
                left = (now - self.started) / done * max(total - done, 0)
                counted, eta = f"{done}/{total} files", f", ETA {time.strftime('%H:%M:%S', time.gmtime(left))}"
            print(f"ingest: {counted}, {frames} frames, {mb:.1f} MB, {rate:.1f} MB/s{eta}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(report: IngestReport, out: TextIO | None = None) -> None:
    """Counts per outcome, MB in and out, ratio, throughput; then the files
    that need a person (failed, conflict) with their reasons."""
    out = out or sys.stdout
    counts = report.counts()
    print(f"\n{'outcome':<12}{'files':>8}{'MB in':>11}{'MB out':>11}{'ratio':>8}", file=out)
    for outcome in IngestOutcome:
        bytes_in, bytes_out = report.bytes(outcome)
        ratio = f"{bytes_out / bytes_in:8.3f}" if bytes_in and bytes_out else f"{'-':>8}"
        print(f"{outcome.value:<12}{counts.get(outcome.value, 0):>8}{bytes_in / 1e6:>11.1f}{bytes_out / 1e6:>11.1f}{ratio}",
              file=out)
    total_in = report.bytes(None)[0]
    print(f"{report.files} files in {report.seconds:.1f} s ({total_in / 1e6 / max(report.seconds, 1e-9):.1f} MB/s); "
          f"{report.skipped} already done in an earlier run.", file=out)
    for e in report.attention:
        print(f"  {e.outcome}: {e.source_path}: {e.reason}: {e.detail}", file=out)


class ReportFile:
    """`--report FILE.json`, written as the run goes: each file's entry once
    it is committed, so that a run of a million files does not hold its
    report in memory; the totals last. Until `finish` it is FILE.json.partial:
    a report cut short (a crash, a full disk) never looks complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f"{path.name}.partial")
        self._file = open(self.partial, "w", encoding="utf-8")
        self._file.write('{"instances": [')
        self._separator = "\n"

    @property
    def paths(self) -> tuple[Path, Path]:
        """The files this report is written to: never to be ingested."""
        return self.path, self.partial

    def add(self, entry: Entry) -> None:
        self._file.write(self._separator + json.dumps(entry.to_json()))
        self._separator = ",\n"

    def finish(self, report: IngestReport, **extra: Any) -> None:
        """Write the totals (and `extra` keys: a migration's studies) and
        give the report its name."""
        totals = {"seconds": report.seconds, "skipped": report.skipped, "counts": report.counts(), **extra}
        self._file.write(f"\n], {json.dumps(totals)[1:]}\n")
        self._file.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Stop writing; an unfinished report stays FILE.json.partial."""
        self._file.close()
