"""A Beam filesystem for tests that behaves like an object store (gs://, s3://): no directories, and a rename that
is a copy then a delete, not atomic. `fakeremote://bucket/path` lives under $DEEP_RNN_FAKEREMOTE_ROOT on the local
disk. Importing this module registers the scheme with Beam (FileSystem subclasses are found by their scheme)."""
from __future__ import annotations

import os
import shutil

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "fakeremote"


def _local(path: str) -> str:
    assert path.startswith(f"{SCHEME}://"), path
    return os.path.join(os.environ["DEEP_RNN_FAKEREMOTE_ROOT"], path[len(SCHEME) + 3:])


def _remote(local: str) -> str:
    return f"{SCHEME}://" + os.path.relpath(local, os.environ["DEEP_RNN_FAKEREMOTE_ROOT"])


def _prune(folder: str) -> None:
    """Empty local folders go with their last file: an object store has no directories to leave behind."""
    root = os.environ["DEEP_RNN_FAKEREMOTE_ROOT"]
    while folder.startswith(root) and folder != root and not os.listdir(folder):
        os.rmdir(folder)
        folder = os.path.dirname(folder)


class FakeRemoteFileSystem(FileSystem):
    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # an object store has no directories

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        local = _local(dir_or_prefix)
        root = local if os.path.isdir(local) else os.path.dirname(local)
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if path.startswith(local):
                    yield FileMetadata(_remote(path), os.path.getsize(path), os.path.getmtime(path))

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        os.makedirs(os.path.dirname(_local(path)), exist_ok=True)
        return self._local.create(_local(path), mime_type, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._local.open(_local(path), mime_type, compression_type)

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(_local(destination)), exist_ok=True)
            shutil.copyfile(_local(source), _local(destination))

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)  # not atomic: a copy, then a delete
        self.delete(source_file_names)

    def exists(self, path):
        return os.path.exists(_local(path))

    def size(self, path):
        return os.path.getsize(_local(path))

    def last_updated(self, path):
        return os.path.getmtime(_local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        errors = {}
        for path in paths:
            local = _local(path)
            if os.path.isdir(local):
                shutil.rmtree(local)
            elif os.path.exists(local):
                os.unlink(local)
                _prune(os.path.dirname(local))
            else:
                errors[path] = FileNotFoundError(path)
        if errors:
            raise BeamIOError("delete failed", errors)
