"""The flights example's masking stage in Python, a drop-in for
`builtin:mask` with the same config: each column listed in `sha256` is
replaced by the hex SHA-256 of `salt` followed by the value's text (int64
values as decimal); nulls stay null.

The hashing runs in the host's SHA-256 kernel (`Col.sha256_hex`), which
uses the CPU's SHA instructions; the column never crosses into Python.
"""

import weir


class Transform(weir.Transformer):
    def reads(self):
        # Nothing is sent: the kernel reads the columns on the host.
        return []

    def process(self, batch: weir.Batch) -> weir.Batch:
        config = weir.config()
        salt = config.get("salt", "")
        for name in config.get("sha256", []):
            column = batch.col(name)
            if column.type not in (weir.UTF8, weir.BINARY, weir.INT64):
                raise weir.InvalidInput(f"mask: column `{name}` must be utf8, binary or int64")
            batch = batch.with_column(name, column.sha256_hex(salt))
        return batch
