"""The on-disk state of a batch job, built so that SIGKILL at any moment loses nothing that
was reported done and never leaves a half-written file under a final name.

    DIR/run.json            the settings the results depend on; another run must match them
    DIR/.lock               flock'ed while a run works here (released by the kernel on kill)
    DIR/parts/part-N.parquet  finished rows, written by models.atomic (tmp, fsync, rename)
    DIR/results.parquet|csv the parts merged (one row per input), rewritten atomically

A row reaches a part only after its masks/overlays/maps are on disk, so a resumed run
skips exactly the inputs that are complete."""

from __future__ import annotations

import errno
import fcntl
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.atomic import TMP_PREFIX, replacing
from models.errors import NanoinspectError
from service.batch.inputs import Item

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # absolute path of the input
        ("relative_path", pa.string()),  # under its INPUT root; names masks/overlays/maps
        ("width", pa.int32()),  # of the scored image (after any banner crop)
        ("height", pa.int32()),
        ("score", pa.float64()),  # the image score (models.decision), against image_threshold
        ("is_anomalous", pa.bool_()),  # score > image_threshold, or out of distribution
        ("out_of_distribution", pa.string()),  # why the image is unlike the training images
        ("reason", pa.string()),  # why anomalous or normal, in one line
        ("image_threshold", pa.float64()),  # tau and gamma as used for this row
        ("pixel_threshold", pa.float64()),
        ("alpha", pa.float64()),
        ("sigma", pa.float64()),
        ("anomalous_area_fraction", pa.float64()),
        ("n_regions", pa.int32()),
        (
            "regions",
            pa.string(),
        ),  # JSON list of {bbox: [x, y, w, h], area, peak/mean_score, counts}
        ("notes", pa.string()),  # JSON list: what decoding and scoring did, as the API says
        ("error", pa.string()),  # null when scored
        ("error_code", pa.string()),
        ("model_sha256", pa.string()),
        ("decode_ms", pa.float64()),
        ("infer_ms", pa.float64()),  # the image's share of its batch's inference time
        ("save_ms", pa.float64()),
    ]
)
RESULTS = ("results.parquet", "results.csv")
# The output's storage is full or refuses writes: the job stops (every input would fail)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class StorageError(NanoinspectError):
    """The results cannot be written; what was committed stays, a rerun resumes."""

    code = "write_failed"
    exit_code = 3


def storage_error(out: Path, e: OSError) -> StorageError:
    return StorageError(
        f"{out}: cannot write results ({e.strerror or e}); the rows committed so far are kept: "
        "free space and run the same command again to resume"
    )


class Store:
    def __init__(self, out: Path, *, part_rows: int = 256, part_seconds: float = 5.0):
        self.out, self.parts = out, out / "parts"
        self.part_rows, self.part_seconds = part_rows, part_seconds
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()
        self._lock = None

    def open(self, manifest: dict) -> None:
        """Lock DIR, then check (or record) the settings; leftovers of a killed run go."""
        self.parts.mkdir(parents=True, exist_ok=True)
        self._lock = (self.out / ".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NanoinspectError(f"{self.out}: another `nanoinspect score` works here") from None
        run = self.out / "run.json"
        if run.exists():
            before = json.loads(run.read_text())
            diff = [
                k
                for k in sorted(manifest.keys() | before.keys())
                if before.get(k) != manifest.get(k)
            ]
            if diff:
                detail = "; ".join(
                    f"{k}: {before.get(k)!r} then, {manifest.get(k)!r} now" for k in diff
                )
                raise NanoinspectError(
                    f"{self.out} holds results of a run with other settings ({detail}): "
                    "use another --out, or delete it to start over"
                )
        else:
            with replacing(run) as (tmp,):
                tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        for tmp in self.out.rglob(f"{TMP_PREFIX}*"):  # half-written parts, results, masks...
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def read(self) -> pa.Table:
        """All finished rows, oldest part first. An unreadable part (only possible after a
        crash of the disk, not of this program) is moved aside and its inputs redone."""
        tables = []
        for f in self._part_files():
            try:
                tables.append(pq.read_table(f).cast(SCHEMA))
            except (OSError, pa.ArrowException) as e:
                f.rename(f.with_suffix(".corrupt"))
                print(f"warning: {f} unreadable ({e}); its images are redone", file=sys.stderr)
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def finished(self, *, retry_errors: bool) -> set[str]:
        rows = self.read()
        if retry_errors:
            rows = rows.filter(pc.is_null(rows["error"]))
        return set(rows["path"].to_pylist())

    def add(self, rows: Iterable[dict]) -> None:
        self.buffer.extend(rows)
        full = len(self.buffer) >= self.part_rows
        if full or time.monotonic() - self.last_flush >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        files = self._part_files()
        n = int(files[-1].stem.split("-")[1]) + 1 if files else 0
        table = pa.Table.from_pylist(self.buffer, schema=SCHEMA)
        part = self.parts / f"part-{n:06d}.parquet"
        with replacing(part) as (tmp,):
            pq.write_table(table, str(tmp))
        self.buffer = []

    def merge(self, items: list[Item]) -> pa.Table:
        """One row per input, in input order: the latest row of each path (a retried error
        is replaced by its new row); rows of inputs no longer listed are left out."""
        rows = self.read()
        rows = rows.append_column("_n", pa.array(range(rows.num_rows), pa.int64()))
        latest = rows.group_by("path").aggregate([("_n", "max")])["_n_max"]
        rows = rows.take(latest).drop_columns(["_n"])
        keep = pc.is_in(rows["path"], value_set=pa.array([i.path for i in items], pa.string()))
        rows = rows.filter(keep).sort_by("path")  # items are sorted by path
        with replacing(*(self.out / name for name in RESULTS)) as (parquet, csv):
            pq.write_table(rows, str(parquet))
            pacsv.write_csv(rows, str(csv))
        return rows
