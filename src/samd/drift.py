"""Prediction drift: a signed baseline of what the model was validated on, and what it sees now.

`samd baseline` bins every input feature and every output column of a validation sample (quantile
bins; a column with few distinct values gets one bin per value) and writes the bin edges and the
share of the sample in each bin to `samd-baseline.json`. The file goes INTO the model directory
before `samd sign`, so it is signed and verified like the weights: the server reads it only from
the verified file set, and nobody can loosen drift detection without breaking the signature.

The server (`samd serve`, `samd proxy`) keeps a rolling window of the rows it answered, as bin
counts: requests are queued as arrays (one list append per request) and binned in numpy per batch
of rows, and the window is a ring of segments, so memory is fixed and the cost per prediction is
amortised O(1). At every scrape it compares the window with the baseline:

- population stability index, PSI = sum((p - q) * ln(p / q)); by convention < 0.1 no significant
  shift, 0.1 to 0.25 a moderate shift worth a look, > 0.25 a significant shift;
- Jensen-Shannon divergence in bits (0 the same distribution, 1 disjoint): bounded and symmetric,
  for dashboards; the alerts use the PSI. (On a normal feature shifted by 0.5 standard deviations,
  PSI 0.26 and JS 0.046.)

Both are NaN (no sample, no alert) until the window holds `min_rows` rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from samd.errors import UsageError

BASELINE_FILE = "samd-baseline.json"
"""The baseline's file name inside the model directory."""
FORMAT = "samd.dev/drift-baseline/v1"
MAX_COLUMNS = 64
"""Input features plus output columns a baseline may track: each is a label value of the gauges."""
MAX_BINS = 50
MIN_SAMPLE_ROWS = 100
DEFAULT_BINS = 10
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
SMOOTHING = 1e-4
"""Added to every bin's share so an empty bin does not make the PSI infinite."""


class BaselineError(UsageError):
    """A baseline that cannot be built or read."""


@dataclass(frozen=True)
class ColumnBaseline:
    """One input feature or output column: where it is in its tensor, its bins and their shares."""

    name: str
    tensor: str
    column: int  # index in the tensor's row, flattened
    edges: tuple[float, ...]  # ascending cut points; bin i holds edges[i-1] <= x < edges[i]
    proportions: tuple[float, ...]  # len(edges) + 1 shares of the sample, summing to 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensor": self.tensor,
            "column": self.column,
            "edges": list(self.edges),
            "proportions": list(self.proportions),
        }


@dataclass(frozen=True)
class Baseline:
    rows: int
    inputs: tuple[ColumnBaseline, ...]
    outputs: tuple[ColumnBaseline, ...]

    def columns(self) -> Iterator[tuple[str, ColumnBaseline]]:
        for column in self.inputs:
            yield "input", column
        for column in self.outputs:
            yield "output", column

    def to_json(self) -> bytes:
        document = {
            "format": FORMAT,
            "rows": self.rows,
            "inputs": [column.to_dict() for column in self.inputs],
            "outputs": [column.to_dict() for column in self.outputs],
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str = BASELINE_FILE) -> Baseline:
        """Parse and check a baseline; anything malformed is a `BaselineError` naming the problem."""
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise BaselineError(f"{source} is not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BaselineError(
                f"{source} is not a drift baseline (format {FORMAT!r} expected)",
                hint="write it with `samd baseline MODEL_DIR --sample FILE`",
            )
        rows = document.get("rows")
        if not isinstance(rows, int) or rows < 1:
            raise BaselineError(f"{source}: 'rows' must be a positive integer")
        inputs = _parse_columns(document.get("inputs"), f"{source} inputs")
        outputs = _parse_columns(document.get("outputs"), f"{source} outputs")
        baseline = cls(rows, inputs, outputs)
        _check_columns(baseline, source)
        return baseline


def _parse_columns(items: Any, where: str) -> tuple[ColumnBaseline, ...]:
    if not isinstance(items, list):
        raise BaselineError(f"{where} must be a list")
    columns = []
    for index, item in enumerate(items):
        try:
            edges = tuple(float(edge) for edge in item["edges"])
            proportions = tuple(float(share) for share in item["proportions"])
            column = ColumnBaseline(
                str(item["name"]), str(item["tensor"]), int(item["column"]), edges, proportions
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BaselineError(f"{where}[{index}] is malformed ({type(error).__name__}: {error})") from None
        problem = _column_problem(column)
        if problem:
            raise BaselineError(f"{where}[{index}] ({column.name}): {problem}")
        columns.append(column)
    return tuple(columns)


def _column_problem(column: ColumnBaseline) -> str:
    if not column.name or len(column.name) > 128:
        return "the name must be 1 to 128 characters"
    if column.column < 0:
        return "the column index must not be negative"
    if len(column.proportions) != len(column.edges) + 1:
        return "it needs one more proportion than edges"
    if len(column.proportions) > MAX_BINS:
        return f"at most {MAX_BINS} bins"
    if not all(math.isfinite(edge) for edge in column.edges) or list(column.edges) != sorted(
        set(column.edges)
    ):
        return "the edges must be finite and strictly ascending"
    if any(not math.isfinite(share) or share < 0 for share in column.proportions):
        return "the proportions must be finite and not negative"
    if abs(sum(column.proportions) - 1.0) > 1e-6:
        return "the proportions must sum to 1"
    return ""


def _check_columns(baseline: Baseline, source: str) -> None:
    count = len(baseline.inputs) + len(baseline.outputs)
    if count == 0:
        raise BaselineError(f"{source} tracks no column")
    if count > MAX_COLUMNS:
        raise BaselineError(
            f"{source} tracks {count} columns; at most {MAX_COLUMNS} (each is a label value of the drift gauges)",
            hint="choose the features that matter with `samd baseline --feature`",
        )
    for direction, group in (("input", baseline.inputs), ("output", baseline.outputs)):
        names = [column.name for column in group]
        if len(set(names)) != len(names):
            raise BaselineError(f"{source}: the {direction} column names must be unique")
        places = [(column.tensor, column.column) for column in group]
        if len(set(places)) != len(places):
            raise BaselineError(f"{source}: two {direction} columns name the same tensor column")


# --- building a baseline ------------------------------------------------------------------------


def column_bins(values: np.ndarray[Any, Any], bins: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Quantile cut points of `values` (or one bin per value when it has at most `bins` of them),
    and the share of the values in each bin."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        raise BaselineError("the column has no finite value")
    distinct = np.unique(finite)
    if distinct.size <= bins:
        edges = (distinct[:-1] + distinct[1:]) / 2.0
    else:
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    shares = counts / counts.sum()
    return tuple(float(edge) for edge in edges), tuple(float(share) for share in shares)


def _columns_of(
    tensors: Mapping[str, np.ndarray[Any, Any]],
    names: Mapping[str, Sequence[str]],
    bins: int,
    rows: int,
) -> list[ColumnBaseline]:
    columns = []
    for tensor, array in tensors.items():
        if array.dtype.kind not in "biuf":
            continue  # strings and objects have no order to bin; they are not tracked
        if array.shape[:1] != (rows,):
            raise BaselineError(
                f"tensor {tensor!r} has {array.shape[0] if array.ndim else 0} rows, the sample has {rows}"
            )
        table = array.reshape(rows, -1)
        given = list(names.get(tensor, ()))
        if given and len(given) != table.shape[1]:
            raise BaselineError(
                f"{len(given)} feature names for tensor {tensor!r}, which has {table.shape[1]} columns"
            )
        for index in range(table.shape[1]):
            if given:
                name = given[index]
            elif table.shape[1] == 1:
                name = tensor
            else:
                name = f"{tensor}[{index}]"
            try:
                edges, shares = column_bins(table[:, index], bins)
            except BaselineError as error:
                raise BaselineError(f"{name}: {error.message}") from None
            columns.append(ColumnBaseline(name, tensor, index, edges, shares))
    return columns


def build_baseline(
    inputs: Mapping[str, np.ndarray[Any, Any]],
    outputs: Mapping[str, np.ndarray[Any, Any]],
    *,
    names: Mapping[str, Sequence[str]] | None = None,
    bins: int = DEFAULT_BINS,
    keep: Sequence[str] = (),
) -> Baseline:
    """The baseline of a sample: `inputs` and `outputs` are tensors with one row per example.

    `names` gives feature names per input tensor (a CSV header); `keep`, when given, limits the
    tracked input features to those names.
    """
    if not 2 <= bins <= MAX_BINS:
        raise BaselineError(f"--bins must be between 2 and {MAX_BINS}")
    if not inputs:
        raise BaselineError("the sample has no input tensor")
    rows = {array.shape[0] if array.ndim else 0 for array in inputs.values()}
    if len(rows) != 1:
        raise BaselineError("the sample's input tensors have different numbers of rows")
    (count,) = rows
    if count < MIN_SAMPLE_ROWS:
        raise BaselineError(
            f"the sample has {count} rows; a baseline needs at least {MIN_SAMPLE_ROWS} to mean anything",
            hint="use the validation set the model was evaluated on",
        )
    input_columns = _columns_of(inputs, names or {}, bins, count)
    if keep:
        unknown = sorted(set(keep) - {column.name for column in input_columns})
        if unknown:
            raise BaselineError(
                f"--feature {', '.join(unknown)} is not in the sample; it has "
                + ", ".join(column.name for column in input_columns[:20])
            )
        input_columns = [column for column in input_columns if column.name in set(keep)]
    baseline = Baseline(count, tuple(input_columns), tuple(_columns_of(outputs, {}, bins, count)))
    _check_columns(baseline, "the baseline")
    return baseline


# --- measures ----------------------------------------------------------------------------------


def _smoothed(shares: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    smoothed = shares + SMOOTHING
    result: np.ndarray[Any, Any] = smoothed / smoothed.sum()
    return result


def psi(expected: np.ndarray[Any, Any], observed: np.ndarray[Any, Any]) -> float:
    """Population stability index of `observed` shares against `expected` shares."""
    q, p = _smoothed(expected), _smoothed(observed)
    return float(np.sum((p - q) * np.log(p / q)))


def jensen_shannon(expected: np.ndarray[Any, Any], observed: np.ndarray[Any, Any]) -> float:
    """Jensen-Shannon divergence in bits (0 to 1)."""
    q, p = _smoothed(expected), _smoothed(observed)
    m = (p + q) / 2.0
    return float(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))


# --- the rolling window ------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnDrift:
    direction: str  # input or output
    name: str
    rows: int
    psi: float  # NaN until the window holds min_rows rows
    jensen_shannon: float


class _TensorBins:
    """The tracked columns of one tensor, binned together: edges padded to a rectangle with +inf."""

    def __init__(self, columns: Sequence[tuple[int, ColumnBaseline]]) -> None:
        self.indices = np.array([column.column for _, column in columns], dtype=np.intp)
        self.width = int(self.indices.max()) + 1
        most = max(len(column.edges) for _, column in columns)
        self.edges = np.full((len(columns), max(most, 1)), np.inf)
        for row, (_, column) in enumerate(columns):
            self.edges[row, : len(column.edges)] = column.edges
        self.offsets = np.array([offset for offset, _ in columns], dtype=np.intp)

    def bin_offsets(self, arrays: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
        """The flat bin index of every finite value of the tracked columns."""
        arrays = [array for array in arrays if array.ndim >= 1 and array.size]
        if not arrays:
            return np.empty(0, dtype=np.intp)
        try:  # requests were checked against the model's shape: one concatenation, then one reshape
            joined = np.concatenate(arrays)
            table = joined.reshape(joined.shape[0], -1)
        except ValueError:
            table = np.concatenate([array.reshape(array.shape[0], -1) for array in arrays])
        if table.shape[1] < self.width:
            return np.empty(0, dtype=np.intp)
        values = table[:, self.indices].astype(np.float64, copy=False)
        bins = (values[:, :, None] >= self.edges[None, :, :]).sum(axis=2)
        flat = bins + self.offsets[None, :]
        result: np.ndarray[Any, Any] = flat[np.isfinite(values)]
        return result


class DriftMonitor:
    """A rolling window of the rows a server answered, as bin counts, compared with a baseline.

    `observe` is called once per answered request on the event loop's thread; it only queues the
    arrays. Every `batch_rows` rows (and at every scrape) the queue is binned in numpy. The window
    is `segments` segments of `window_rows / segments` rows: when the newest is full the oldest is
    dropped, so the window holds between `window_rows - window_rows / segments` and `window_rows`
    rows once it is warm.
    """

    def __init__(
        self,
        baseline: Baseline,
        *,
        window_rows: int = 10_000,
        segments: int = 10,
        batch_rows: int = 256,
        min_rows: int = 200,
    ) -> None:
        if window_rows < segments or segments < 2:
            raise UsageError("the drift window needs at least 2 segments and one row per segment")
        self.baseline = baseline
        self.min_rows = min_rows
        self.batch_rows = batch_rows
        self._columns = list(baseline.columns())
        sizes = [len(column.proportions) for _, column in self._columns]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self._expected = [np.array(column.proportions) for _, column in self._columns]
        total = int(self._starts[-1])
        self._segment_rows = window_rows // segments
        self._segments = np.zeros((segments, total), dtype=np.int64)
        self._segment_filled = np.zeros(segments, dtype=np.int64)
        self._current = 0
        self._inputs = self._group("input")
        self._outputs = self._group("output")
        self._first_input = next(iter(self._inputs), None)
        # (inputs, output arrays) or (inputs, (response document, binary parts)): answers are decoded
        # per batch in flush(), so a request costs one append.
        self._pending: list[tuple[Mapping[str, Any], Any]] = []
        self._pending_rows = 0
        self.observed_rows = 0

    @property
    def output_names(self) -> frozenset[str]:
        return frozenset(self._outputs)

    def _group(self, direction: str) -> dict[str, _TensorBins]:
        by_tensor: dict[str, list[tuple[int, ColumnBaseline]]] = {}
        for index, (kind, column) in enumerate(self._columns):
            if kind == direction:
                by_tensor.setdefault(column.tensor, []).append((int(self._starts[index]), column))
        return {tensor: _TensorBins(columns) for tensor, columns in by_tensor.items()}

    def observe(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> None:
        """Queue one answered request's tensors (one append: the binning happens per batch)."""
        self._queue(inputs, outputs)

    def observe_answer(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], document: Mapping[str, Any], parts: Sequence[bytes]
    ) -> None:
        """Queue one answered request: its input arrays and its V2 response (decoded per batch)."""
        self._queue(inputs, (document, parts))

    def _queue(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Any) -> None:
        self._pending.append((inputs, outputs))
        first = inputs.get(self._first_input) if self._first_input is not None else None
        self._pending_rows += first.shape[0] if first is not None and first.ndim else 1
        if self._pending_rows >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Bin the queued rows into the window."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows, self._pending_rows = self._pending_rows, 0
        parts = [
            bins.bin_offsets([given[name] for given, _ in pending if name in given])
            for name, bins in self._inputs.items()
        ]
        if self._outputs:
            answers = [answer for _, answer in pending if isinstance(answer, tuple)]
            decoded = _decode_answers(answers, frozenset(self._outputs)) if answers else {}
            for name, bins in self._outputs.items():
                arrays = [given[name] for _, given in pending if isinstance(given, Mapping) and name in given]
                parts.append(bins.bin_offsets(arrays + decoded.get(name, [])))
        counts = np.bincount(np.concatenate(parts), minlength=self._segments.shape[1])
        self._segments[self._current] += counts
        self._segment_filled[self._current] += rows
        self.observed_rows += rows
        if self._segment_filled[self._current] >= self._segment_rows:
            self._current = (self._current + 1) % self._segments.shape[0]
            self._segments[self._current] = 0
            self._segment_filled[self._current] = 0

    def window_rows(self) -> int:
        return int(self._segment_filled.sum())

    def drift(self) -> list[ColumnDrift]:
        """PSI and Jensen-Shannon divergence of every tracked column over the window."""
        self.flush()
        window = self._segments.sum(axis=0)
        results = []
        for index, (direction, column) in enumerate(self._columns):
            counts = window[self._starts[index] : self._starts[index + 1]]
            rows = int(counts.sum())
            if rows < self.min_rows:
                results.append(ColumnDrift(direction, column.name, rows, math.nan, math.nan))
                continue
            observed = counts / rows
            expected = self._expected[index]
            results.append(
                ColumnDrift(
                    direction, column.name, rows, psi(expected, observed), jensen_shannon(expected, observed)
                )
            )
        return results


def _decode_answers(
    answers: Sequence[tuple[Mapping[str, Any], Sequence[bytes]]], wanted: frozenset[str]
) -> dict[str, list[np.ndarray[Any, Any]]]:
    """The `wanted` outputs of V2 response documents as arrays: JSON data of all the answers is
    gathered into one array per output (one numpy conversion per batch), binary parts are viewed."""
    from samd.serving.protocol import DATATYPES  # noqa: PLC0415 - keep this module free of serving

    values: dict[str, list[Any]] = {name: [] for name in wanted}
    widths: dict[str, int] = {}
    arrays: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in wanted}
    for document, parts in answers:
        outputs = document.get("outputs")
        if not isinstance(outputs, list):
            continue
        part = 0
        for entry in outputs:
            if not isinstance(entry, dict):
                continue
            parameters = entry.get("parameters")
            if parameters and isinstance(parameters, dict) and "binary_data_size" in parameters:
                shape = entry.get("shape")
                dtype = DATATYPES.get(str(entry.get("datatype")))
                if entry.get("name") in wanted and part < len(parts) and dtype not in (None, np.object_):
                    with contextlib.suppress(TypeError, ValueError):
                        arrays[entry["name"]].append(np.frombuffer(parts[part], dtype=dtype).reshape(shape))
                part += 1
                continue
            name = entry.get("name")
            if name not in values:
                continue
            data, shape = entry.get("data"), entry.get("shape")
            # An output that does not match its shape is not counted; the answer still went out.
            if isinstance(data, list) and isinstance(shape, list) and shape and isinstance(shape[0], int):
                rows = shape[0]
                if (
                    rows > 0
                    and len(data) % rows == 0
                    and widths.setdefault(name, len(data) // rows) * rows == len(data)
                ):
                    values[name].extend(data)
    for name, gathered in values.items():
        if gathered:
            with contextlib.suppress(TypeError, ValueError):
                arrays[name].append(np.array(gathered, dtype=np.float64).reshape(-1, widths[name]))
    return arrays


def response_outputs(
    document: Mapping[str, Any], parts: Sequence[bytes], wanted: frozenset[str]
) -> dict[str, np.ndarray[Any, Any]]:
    """The `wanted` outputs of one V2 response document as arrays (JSON data or binary parts)."""
    decoded = _decode_answers([(document, parts)], wanted)
    return {name: np.concatenate(found) for name, found in decoded.items() if found}


# --- samples -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A validation sample: tensors by name (one row per example) and feature names per tensor."""

    tensors: dict[str, np.ndarray[Any, Any]]
    names: dict[str, tuple[str, ...]]


def load_sample(path: Any, input_name: str | None) -> Sample:
    """Read a sample file: .npz (arrays named like the model's inputs, and optionally its outputs),
    .npy (one array: the single input `input_name`) or .csv (a header of feature names, then one
    numeric row per example: the single input `input_name`)."""
    from pathlib import Path  # noqa: PLC0415

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BaselineError(f"the sample {path} does not exist")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return Sample({name: np.asarray(archive[name]) for name in archive.files}, {})
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            return Sample({_single_input(input_name, path): np.asarray(array)}, {})
        if suffix == ".csv":
            return _load_csv(path, _single_input(input_name, path))
    except (OSError, ValueError) as error:
        raise BaselineError(f"cannot read the sample {path}: {error}") from None
    raise BaselineError(
        f"the sample {path} is not .npz, .npy or .csv",
        hint="save the validation inputs with numpy.savez (one array per model input) or as CSV",
    )


def _single_input(input_name: str | None, path: Any) -> str:
    if input_name is None:
        raise BaselineError(
            f"{path} holds one table; say which model input it is with --input NAME",
            hint="or put a single .onnx model in the model directory, whose only input is used",
        )
    return input_name


def _load_csv(path: Any, input_name: str) -> Sample:
    import csv  # noqa: PLC0415

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise BaselineError(f"the CSV sample {path} is empty; its first row must name the features")
        names = tuple(name.strip() for name in header)
        if len(set(names)) != len(names) or not all(names):
            raise BaselineError(f"the CSV sample {path} needs a header of distinct, non-empty feature names")
        rows = []
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise BaselineError(
                    f"{path} line {number} has {len(row)} values; the header names {len(names)}"
                )
            try:
                rows.append([float(value) for value in row])
            except ValueError:
                raise BaselineError(f"{path} line {number} holds a value that is not a number") from None
    return Sample({input_name: np.array(rows, dtype=np.float64).reshape(-1, len(names))}, {input_name: names})
