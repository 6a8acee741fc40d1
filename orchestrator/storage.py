"""Where a sweep keeps its state and results: a local folder, s3://, gs://, or a declared shared folder.

Ray Tune (>= 2.10) no longer syncs trial folders to the head node, so once trials can run on more than one node
the storage must be reachable from every node. ``Storage`` turns the spec's ``storage`` block into Ray's
``(storage_path, storage_filesystem)`` pair and moves result files in and out of it with pyarrow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


@dataclass
class Storage:
    uri: str  # as given: a folder or a URI
    endpoint: str | None = None  # custom S3 endpoint, e.g. http://127.0.0.1:5000
    shared: bool = False  # a folder the user declares mounted on every node (NFS, RWX volume)

    @property
    def remote(self) -> bool:
        return self.uri.startswith(REMOTE_SCHEMES)

    @property
    def multi_node_safe(self) -> bool:
        return self.remote or self.shared

    def filesystem(self) -> pafs.FileSystem | None:
        """The pyarrow filesystem for Ray's ``storage_filesystem`` (None lets Ray infer it from the URI)."""
        if not self.remote:
            return None
        if self.endpoint and self.uri.startswith("s3://"):
            scheme = "https" if self.endpoint.startswith("https") else "http"
            host = self.endpoint.split("://", 1)[-1].rstrip("/")
            return pafs.S3FileSystem(
                endpoint_override=host,
                scheme=scheme,
                allow_bucket_creation=True,
                region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            )
        fs, _ = pafs.FileSystem.from_uri(self.uri)
        return fs

    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for ``tune.RunConfig``."""
        fs = self.filesystem()
        if fs is None:
            return str(Path(self.uri).expanduser().resolve()), None
        return self.uri.split("://", 1)[1].rstrip("/"), fs  # with an explicit filesystem: no scheme

    def fs_path(self, name: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path inside it) of the sweep folder, for reading and writing result files."""
        path, fs = self.ray_storage()
        if fs is None:
            return pafs.LocalFileSystem(), f"{path}/{name}"
        return fs, f"{path}/{name}"

    def upload(self, local_dir: str | Path, name: str) -> str:
        """Copy a local folder of results into the sweep folder (no-op when the storage is that folder)."""
        fs, dest = self.fs_path(name)
        if isinstance(fs, pafs.LocalFileSystem) and Path(dest).resolve() == Path(local_dir).resolve():
            return dest
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local_dir), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return dest
