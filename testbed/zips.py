"""Hostile zip archives, written byte by byte, for the tests and benchmarks of snapshot checks.

Each is a valid zip that `zipfile` reads without complaint: what makes it hostile is its shape (a million entries,
entries sharing one deflated kernel), not a corrupt byte. Builders take a path, write the file and return it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_STORED, _DEFLATED = 0, 8
_UTF8 = 0x800
_UNIX_FILE = (0o100644 << 16)
_VERSION = 45                  # zip64-capable "version needed", as zipfile writes it
_DOS_DATE = (1 << 5) | 1       # 1980-01-01


def _local(name: bytes, method: int, crc: int, compressed: int, size: int) -> bytes:
    return _LOCAL.pack(b"PK\x03\x04", 20, 0, _UTF8, method, 0, _DOS_DATE, crc, compressed, size, len(name), 0) + name


def _central(name: bytes, method: int, crc: int, compressed: int, size: int, offset: int) -> bytes:
    return _CENTRAL.pack(b"PK\x01\x02", _VERSION, 3, 20, 0, _UTF8, method, 0, _DOS_DATE, crc, compressed, size,
                         len(name), 0, 0, 0, 0, _UNIX_FILE, offset) + name


def _end(entries: int, directory_bytes: int, directory_offset: int) -> bytes:
    """The end records for a central directory: zip64 ones too once the count no longer fits 16 bits."""
    records = b""
    if entries > 0xFFFF:
        at = directory_offset + directory_bytes
        records = _END64.pack(b"PK\x06\x06", _END64.size - 12, _VERSION, _VERSION, 0, 0, entries, entries,
                              directory_bytes, directory_offset)
        records += _END64_LOCATOR.pack(b"PK\x06\x07", 0, at, 1)
    shown = min(entries, 0xFFFF)
    return records + _END.pack(b"PK\x05\x06", 0, 0, shown, shown, directory_bytes, directory_offset, 0)


def many_empty_entries(path: Path, entries: int) -> Path:
    """A zip of `entries` empty files named by their number (zip64 end records past 65,535 entries).

    A million entries make about 90 MB; `zipfile` parses such a directory into a million objects.
    """
    width = len(str(max(entries - 1, 0)))
    names = [str(i).zfill(width).encode() for i in range(entries)]
    local_bytes = _LOCAL.size + width
    with open(path, "wb") as out:
        out.write(b"".join(_local(name, _STORED, 0, 0, 0) for name in names))
        directory = b"".join(_central(name, _STORED, 0, 0, 0, i * local_bytes) for i, name in enumerate(names))
        out.write(directory)
        out.write(_end(entries, len(directory), entries * local_bytes))
    return path


def claimed_entries(path: Path, entries: int) -> Path:
    """A one-file zip whose zip64 end record claims `entries` entries (its directory holds one)."""
    name = b"train.py"
    data = b"print('hi')\n"
    local = _local(name, _STORED, zlib.crc32(data), len(data), len(data)) + data
    directory = _central(name, _STORED, zlib.crc32(data), len(data), len(data), 0)
    at = len(local) + len(directory)
    records = _END64.pack(b"PK\x06\x06", _END64.size - 12, _VERSION, _VERSION, 0, 0, entries, entries,
                          len(directory), len(local))
    records += _END64_LOCATOR.pack(b"PK\x06\x07", 0, at, 1)
    records += _END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), len(local), 0)
    path.write_bytes(local + directory + records)
    return path


def overlapping_bomb(path: Path, *, entries: int = 16, kernel_bytes: int = 1 << 20) -> Path:
    """David Fifield's "better zip bomb" with quoted overlap: every entry's deflate stream starts with stored blocks
    that quote the local headers of the entries after it, then runs into one shared kernel (`kernel_bytes` zeros,
    deflated). Entry i unpacks to the later entries' headers plus the kernel, with a correct CRC, so the archive
    unpacks to about `entries` times the kernel while its compressed bytes hold the kernel once."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = deflater.compress(bytes(kernel_bytes)) + deflater.flush()
    names = [f"{i:05d}.bin".encode() for i in range(entries)]
    # Built from the last entry back: each entry's header holds the CRC and sizes of what it unpacks to, which
    # include the headers of the entries after it.
    headers: list[bytes] = []
    quoted = b""                # the local headers of the entries after the current one, in order
    compressed = len(kernel)    # from after the current entry's header to the end of the kernel
    for i in reversed(range(entries)):
        crc = zlib.crc32(bytes(kernel_bytes), zlib.crc32(quoted))
        header = _local(names[i], _DEFLATED, crc, compressed, len(quoted) + kernel_bytes)
        headers.insert(0, header)
        quoted = header + quoted
        compressed += 5 + len(header)  # the stored block that quotes this header, in the previous entry's stream
    body = b""
    offsets = []
    for i, header in enumerate(headers):
        offsets.append(len(body))
        body += header
        if i + 1 < entries:
            following = len(headers[i + 1])
            body += struct.pack("<BHH", 0, following, following ^ 0xFFFF)  # stored block, not final
    body += kernel
    directory = b""
    for name, header, offset in zip(names, headers, offsets):
        crc, compressed_size, size = _LOCAL.unpack(header[:_LOCAL.size])[7:10]
        directory += _central(name, _DEFLATED, crc, compressed_size, size, offset)
    path.write_bytes(body + directory + _end(entries, len(directory), len(body)))
    return path


def deflate_bomb(path: Path, *, unpacked_bytes: int) -> Path:
    """One entry of `unpacked_bytes` zeros (under 4 GiB: no zip64 sizes), deflated about 1,000 to 1, built in
    O(unpacked / 1 MiB) from one repeated block. Its CRC is left 0, so even under the caps the check reads all of
    it, then refuses it as corrupt."""
    if unpacked_bytes >= 0xFFFF_FFFF:
        raise ValueError("deflate_bomb writes no zip64 sizes: keep unpacked_bytes under 4 GiB")
    chunk = 1 << 20
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflater.compress(bytes(chunk)) + deflater.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history after
    whole, rest = divmod(unpacked_bytes, chunk)
    stream = block * whole + deflater.compress(bytes(rest)) + deflater.flush()
    name = b"zeros.bin"
    local = _local(name, _DEFLATED, 0, len(stream), unpacked_bytes)
    directory = _central(name, _DEFLATED, 0, len(stream), unpacked_bytes, 0)
    path.write_bytes(local + stream + directory + _end(1, len(directory), len(local) + len(stream)))
    return path
