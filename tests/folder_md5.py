"""md5 sums of every file under a folder: the "a user's folder is left untouched" check."""

import hashlib
import os


def md5_tree(root) -> dict[str, str]:
    """{path relative to root: md5 hex digest} for every file below `root`."""
    sums = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                sums[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
    return sums
