"""Reading a source's windows inside a worker: projected row groups held as arrow, image bytes zero-copy.

A worker visits the windows of its share in order and holds one window per source at a time (the memory
bound: `window_bytes` of row groups, requested columns only). Image bytes are handed to the decoder as
memoryviews into the arrow buffers, so an encoded image is never copied before it is decoded. For remote
sources the next window the worker needs is fetched by a background thread while this one is decoded
(two windows in memory then), so network latency does not stall decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from hubsets.loader.plan import Order
from hubsets.loader.source import Source


class UnitData:
    """One row group in memory, with offsets into its `images` column's bytes (plain or dictionary)."""

    def __init__(self, table: pa.Table, where: str = "") -> None:
        self.table = table
        self.where = where
        """Its file and row group, for messages."""
        if "images" not in table.column_names:
            return
        column = table.column("images")
        lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        self._list_offsets = numeric(lists.offsets)
        self._list_valid = valid(lists)
        images = lists.values.field("bytes")
        self._valid = valid(images)
        self._indices: np.ndarray | None = None
        binary = images
        if pa.types.is_dictionary(images.type):
            self._indices = numeric(images.indices)  # null slots: never read (`_valid`)
            binary = images.dictionary
        width = np.int64 if pa.types.is_large_binary(binary.type) else np.int32
        buffers = binary.buffers()
        self._offsets = np.frombuffer(buffers[1], dtype=width)[binary.offset:binary.offset + len(binary) + 1]
        self._data = memoryview(buffers[2] if buffers[2] is not None else b"").cast("B")

    def images(self, row: int) -> list[memoryview | None]:
        """The encoded images of `row` (None for an image stored by path only, without bytes)."""
        if not self._list_valid[row]:
            return []
        out: list[memoryview | None] = []
        offsets, data = self._offsets, self._data
        for k in range(self._list_offsets[row], self._list_offsets[row + 1]):
            if not self._valid[k]:
                out.append(None)
                continue
            value = k if self._indices is None else self._indices[k]
            out.append(data[offsets[value]:offsets[value + 1]])
        return out


def numeric(array: pa.Array) -> np.ndarray:
    """An integer array as a zero-copy numpy view of its data buffer (values at null slots are undefined).
    Not `to_numpy`, which goes through pyarrow's pandas conversion and so imports pandas: 0.3 s of CPU in
    every freshly started worker (a new set each epoch without persistent workers)."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset:array.offset + len(array)]


def valid(array: pa.Array) -> np.ndarray:
    """The validity of `array`'s slots as numpy bools, read off its bitmap (not `to_numpy`: see `numeric`)."""
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bitmap = np.frombuffer(array.buffers()[0], dtype=np.uint8)
    return np.unpackbits(bitmap, bitorder="little")[array.offset:array.offset + len(array)].astype(bool)


def indices(values: Sequence[int]) -> pa.Array:
    """An int64 arrow array built from its buffer (`pa.array` imports pandas too: see `numeric`)."""
    data = np.asarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


class Reader:
    """One source as seen by one worker: its order per epoch and the window currently loaded."""

    def __init__(self, source: Source, columns: Sequence[str], seed: int, shuffle: bool, window_bytes: int
                 ) -> None:
        self.source = source
        self.columns = [c for c in columns if c in source.schema.names]
        self.seed, self.shuffle, self.window_bytes = seed, shuffle, window_bytes
        self.horizon = -1
        """The last draw (position in the source's endless stream of epochs) this worker will need."""
        self._orders: dict[int, Order] = {}
        self._window: tuple[int, int] | None = None
        self._units: list[UnitData] = []
        remote = source.fs is not None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hubsets-prefetch") if remote else None
        self._ahead: tuple[tuple[int, int], Future[list[UnitData]]] | None = None

    def order(self, epoch: int) -> Order:
        order = self._orders.get(epoch)
        if order is None:
            order = Order(self.source.unit_rows, self.source.unit_bytes, self.seed, epoch, self.shuffle,
                          self.window_bytes)
            if len(self._orders) >= 2:
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = order
        return order

    def rows(self, epoch: int, indices: np.ndarray) -> list[tuple[UnitData, int]]:
        """The rows at sorted positions `indices` of the source's `epoch` order."""
        windows, slots, rows = self.order(epoch).locate(indices)
        out: list[tuple[UnitData, int]] = []
        for window, slot, row in zip(windows.tolist(), slots.tolist(), rows.tolist(), strict=True):
            if self._window != (epoch, window):
                self._load(epoch, window)
            out.append((self._units[slot], row))
        return out

    def _load(self, epoch: int, window: int) -> None:
        self._units = []  # drop the previous window before reading the next
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == (epoch, window):
            self._units = ahead[1].result()
        else:
            self._units = self._read(self.order(epoch).window_units_of(window).tolist())
        self._window = (epoch, window)
        if self._pool is not None:
            self._prefetch_after(epoch, window, self._pool)

    def _prefetch_after(self, epoch: int, window: int, pool: ThreadPoolExecutor) -> None:
        """Start reading the window after (`epoch`, `window`) if this worker will need it."""
        following = (epoch, window + 1) if window + 1 < self.order(epoch).windows else (epoch + 1, 0)
        order = self.order(following[0])
        if following[0] * self.source.num_rows + int(order.window_starts[following[1]]) <= self.horizon:
            units = order.window_units_of(following[1]).tolist()
            self._ahead = (following, pool.submit(self._read, units))

    def _read(self, units: list[int]) -> list[UnitData]:
        return [UnitData(self.source.read_unit(u, self.columns), self.source.where(u)) for u in units]

    def close(self) -> None:
        self._units = []
        self._window = None
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
