"""In-memory fsspec filesystems under their own protocol names, for fault and access tests."""

from __future__ import annotations

from fsspec.implementations.memory import MemoryFileSystem


class AliasedMemoryFS(MemoryFileSystem):
    """memory:// reachable as `<protocol>://`, with its own store; subclasses add behaviour."""

    protocol = "aliased"
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        prefix = f"{cls.protocol}://"
        if isinstance(path, str) and path.startswith(prefix):
            path = "memory://" + path[len(prefix):]
        return super()._strip_protocol(path)
