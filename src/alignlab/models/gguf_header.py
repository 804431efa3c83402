"""A strict, bounded reader of a GGUF file's header: metadata and tensor table, no tensor data.

A GGUF file is untrusted input. Its header is a chain of lengths and counts (string lengths, array
lengths, tensor and key-value counts, tensor offsets and sizes), and a reader that believes them
allocates 2^62 bytes for one string or walks 2^60 tensors. This one checks every length and count
against the bytes left in the file before it reads or allocates anything, and refuses anything
else the format does not allow, with one `AlignlabError` naming the byte at fault. transformers'
readers only ever see a file that passed it.

Layout (little-endian; the `gguf` package's `gguf_reader.py` and `constants.py`, and
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x   (key: string, value_type: u32, value)
    tensor_count x (name: string, n_dims: u32, dims: n_dims x u64, ggml_type: u32, offset: u64)
    padding to `general.alignment` (default 32), then the tensor data, each tensor at its offset

where a string is (length: u64, that many UTF-8 bytes) and an array value is (item_type: u32,
count: u64, count items).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import NamedTuple

from gguf.constants import GGML_QUANT_SIZES

from alignlab.errors import AlignlabError
from alignlab.untrusted import shown

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted in 32 bits and is long gone; 2 and 3 differ only in endianness rules
DEFAULT_ALIGNMENT = 32
MAX_TENSOR_NAME_BYTES = 64  # the format's own limit
MAX_DIMS = 4  # ggml tensors have at most 4 dimensions

STRING, ARRAY = 8, 9
# the fixed-size value types: struct format, by GGUF value type
FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING_LENGTH_BYTES = 8
# The smallest a key-value pair (a 0-byte key, its type, a 1-byte value) and a tensor entry (a 0-byte
# name, one dimension, type, offset) can be: a count that cannot fit the bytes left is refused unread.
MIN_KV_BYTES = STRING_LENGTH_BYTES + 4 + 1
MIN_TENSOR_INFO_BYTES = STRING_LENGTH_BYTES + 4 + 8 + 4 + 8

FIX = "the file is truncated, corrupt or not a GGUF file: download or convert it again"


class Array(NamedTuple):
    """A metadata array, by its item type and length: its items are skipped, not kept, so that a
    vocabulary of 100k strings costs nothing and a lying length cannot make the reader allocate."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # in ggml order: the fastest-moving dimension first (the reverse of torch's)
    ggml_type: int
    offset: int  # from the start of the tensor data
    nbytes: int

    @property
    def elements(self) -> int:
        return prod(self.dims)


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, int | float | bool | str | Array]
    tensors: list[TensorInfo]
    data_start: int  # where the tensor data begins


def invalid(path: Path, problem: str) -> AlignlabError:
    return AlignlabError(f"{path}: not a valid GGUF file ({problem}); {FIX}")


class Cursor:
    """Reads forward through the mapped file; every read checks first that its bytes are there."""

    def __init__(self, path: Path, data: mmap.mmap):
        self.path, self.data, self.pos = path, data, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def fail(self, what: str, at: int, problem: str) -> AlignlabError:
        return invalid(self.path, f"{what} at byte {at} {problem}")

    def skip(self, count: int, what: str) -> int:
        """Advance past `count` bytes of `what`; the position where they start."""
        if count > self.left:
            raise self.fail(what, self.pos, f"needs {count} bytes, but the file ends {self.left} bytes later, "
                                            f"at byte {len(self.data)}")
        start, self.pos = self.pos, self.pos + count
        return start

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.data, self.skip(struct.calcsize(fmt), what))[0]

    def length(self, what: str, item_bytes: int) -> int:
        """A u64 length, of items of at least `item_bytes` bytes each: refused when they cannot fit in
        the rest of the file, before anything reads or allocates them."""
        at = self.pos
        length = self.unpack("<Q", what)
        if length * item_bytes > self.left:
            raise self.fail(what, at, f"is {length}, more than the {self.left} bytes after it can hold")
        return length

    def string(self, what: str) -> str:
        start = self.skip(self.length(f"the length of {what}", 1), what)
        try:
            return self.data[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, start, "is not UTF-8") from None

    def skip_string(self, what: str) -> None:
        self.skip(self.length(f"the length of {what}", 1), what)


def read_value(cursor: Cursor, value_type: int, key: str):
    what = f"the value of {shown(key)}"
    if value_type in FIXED:
        return cursor.unpack(FIXED[value_type], what)
    if value_type == STRING:
        return cursor.string(what)
    if value_type != ARRAY:
        raise cursor.fail(f"the value type of {shown(key)}", cursor.pos - 4, f"is {value_type}, which GGUF does "
                                                                             "not define")
    at = cursor.pos
    item_type = cursor.unpack("<I", f"the item type of array {shown(key)}")
    if item_type in FIXED:
        item_bytes = struct.calcsize(FIXED[item_type])
        length = cursor.length(f"the length of array {shown(key)}", item_bytes)
        cursor.skip(length * item_bytes, f"the items of array {shown(key)}")
    elif item_type == STRING:
        length = cursor.length(f"the length of array {shown(key)}", STRING_LENGTH_BYTES)
        for index in range(length):
            cursor.skip_string(f"item {index} of array {shown(key)}")
    else:  # an array of arrays: no model's metadata holds one, and llama.cpp refuses them too
        raise cursor.fail(f"the item type of array {shown(key)}", at, f"is {item_type}, not a number, bool or "
                                                                      "string")
    return Array(item_type, length)


def read_tensor_info(cursor: Cursor, index: int, alignment: int) -> TensorInfo:
    at = cursor.pos
    name = cursor.string(f"the name of tensor {index}")
    if len(name.encode()) > MAX_TENSOR_NAME_BYTES:
        raise cursor.fail(f"the name of tensor {index}", at, f"is longer than {MAX_TENSOR_NAME_BYTES} bytes")
    what = f"tensor {shown(name)}"
    at = cursor.pos
    n_dims = cursor.unpack("<I", f"the dimension count of {what}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cursor.fail(f"the dimension count of {what}", at, f"is {n_dims}; ggml tensors have 1 to {MAX_DIMS}")
    at = cursor.pos
    dims = tuple(cursor.unpack("<Q", f"the dimensions of {what}") for _ in range(n_dims))
    if 0 in dims:
        raise cursor.fail(f"the dimensions of {what}", at, f"are {list(dims)}: a tensor of no numbers")
    type_at = cursor.pos
    ggml_type = cursor.unpack("<I", f"the type of {what}")
    if ggml_type not in GGML_QUANT_SIZES:
        raise cursor.fail(f"the type of {what}", type_at, f"is {ggml_type}, which the installed gguf package "
                                                          "does not know (pip install -U gguf, if it is new)")
    block_elements, block_bytes = GGML_QUANT_SIZES[ggml_type]
    if dims[0] % block_elements:
        raise cursor.fail(f"the dimensions of {what}", at, f"make rows of {dims[0]} numbers, no whole number of "
                                                           f"type {ggml_type}'s blocks of {block_elements}")
    at = cursor.pos
    offset = cursor.unpack("<Q", f"the data offset of {what}")
    if offset % alignment:
        raise cursor.fail(f"the data offset of {what}", at, f"is {offset}, not a multiple of the alignment, "
                                                            f"{alignment}")
    return TensorInfo(name, dims, ggml_type, offset, prod(dims) // block_elements * block_bytes)


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at `path`, every part checked against the file's size."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:  # also what an empty file, which mmap refuses, fails
                raise invalid(path, "it does not start with the bytes 'GGUF' at byte 0")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return parse(path, data)
    except OSError as err:
        raise AlignlabError(f"{path}: cannot read it ({err.strerror or err}); check that the file is "
                            "readable") from None


def parse(path: Path, data: mmap.mmap) -> GGUFHeader:
    cursor = Cursor(path, data)
    cursor.skip(len(MAGIC), "the magic bytes")
    version = cursor.unpack("<I", "the version")
    if version not in VERSIONS:
        raise cursor.fail("the version", 4, f"is {version}; alignlab reads the little-endian GGUF versions "
                                            f"{' and '.join(map(str, VERSIONS))}")
    tensor_count = cursor.length("the tensor count", MIN_TENSOR_INFO_BYTES)
    kv_count = cursor.length("the metadata count", MIN_KV_BYTES)

    metadata = {}
    for index in range(kv_count):
        at = cursor.pos
        key = cursor.string(f"metadata key {index}")
        if key in metadata:
            raise cursor.fail(f"metadata key {shown(key)}", at, "is given twice")
        metadata[key] = read_value(cursor, cursor.unpack("<I", f"the value type of {shown(key)}"), key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment < 1 or alignment & (alignment - 1):
        raise invalid(path, f"its metadata general.alignment is {shown(alignment)}, not a power of two")

    tensors, names = [], set()
    for index in range(tensor_count):
        at = cursor.pos
        tensor = read_tensor_info(cursor, index, alignment)
        if tensor.name in names:
            raise cursor.fail(f"the name of tensor {index}, {shown(tensor.name)},", at, "is given twice")
        names.add(tensor.name)
        tensors.append(tensor)

    data_start = -(-cursor.pos // alignment) * alignment
    for tensor in tensors:
        end = data_start + tensor.offset + tensor.nbytes
        if end > len(data):
            raise invalid(path, f"the data of tensor {shown(tensor.name)} (dimensions {list(tensor.dims)}, type "
                                f"{tensor.ggml_type}) ends at byte {end}, past the end of the file at byte "
                                f"{len(data)}")
    return GGUFHeader(metadata, tensors, data_start)
