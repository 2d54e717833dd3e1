"""S3 chores for the cluster tests through pyarrow's S3 filesystem, run inside the head's namespace (the only place
that reaches the server). Credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import time

import pyarrow.fs as pafs


def connect(endpoint: str) -> pafs.S3FileSystem:
    scheme, _, host = endpoint.partition("://")
    return pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1",
                             allow_bucket_creation=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("wait").add_argument("--timeout", type=float, default=60)
    sub.add_parser("mkbucket").add_argument("bucket")
    p = sub.add_parser("put")
    p.add_argument("local_dir")
    p.add_argument("path", help="bucket/prefix")
    sub.add_parser("ls").add_argument("path", help="bucket/prefix")
    sub.add_parser("cat").add_argument("path", help="bucket/key")
    args = parser.parse_args()
    s3 = connect(args.endpoint)
    if args.action == "wait":  # creating a bucket works once master, volume, filer and gateway are all up
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                s3.create_dir("uz-ready")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        out: dict = {"ready": True}
    elif args.action == "mkbucket":
        s3.create_dir(args.bucket)
        out = {"bucket": args.bucket}
    elif args.action == "put":
        s3.create_dir(args.path, recursive=True)
        pafs.copy_files(args.local_dir, args.path, destination_filesystem=s3)
        out = {"files": _list(s3, args.path)}
    elif args.action == "ls":
        out = {"files": _list(s3, args.path)}
    else:
        with s3.open_input_stream(args.path) as f:
            out = {"text": f.read().decode()}
    print(json.dumps(out), flush=True)


def _list(s3: pafs.S3FileSystem, path: str) -> list[str]:
    if s3.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = s3.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path[len(path.rstrip("/")) + 1:] for i in infos if i.type == pafs.FileType.File)


if __name__ == "__main__":
    main()
