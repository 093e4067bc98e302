"""Text files of a build (a Dockerfile, a .dockerignore) read as UTF-8, with the line that is not."""
from __future__ import annotations


class NotUtf8(ValueError):
    def __init__(self, line: int, byte: int):
        super().__init__(f"line {line} is not UTF-8 text (byte 0x{byte:02x})")
        self.line, self.byte = line, byte


def decode(data: bytes) -> str:
    """`data` as UTF-8 text (NotUtf8 names the first line where it is not)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8(data.count(b"\n", 0, exc.start) + 1, data[exc.start]) from None
