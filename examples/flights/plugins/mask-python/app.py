"""The flights example's masking stage in Python, a drop-in for
`builtin:mask` with the same config: each column listed in `sha256` is
replaced by the hex SHA-256 of `salt` followed by the value's text (int64
values as decimal); nulls stay null."""

import hashlib

import weir


class Transform(weir.Transformer):
    def reads(self):
        # Only the masked columns are sent, and only they come back.
        return weir.config().get("sha256", [])

    def process(self, batch: weir.Batch) -> weir.Batch:
        config = weir.config()
        salted = hashlib.sha256(config.get("salt", "").encode())
        for name in config.get("sha256", []):
            if batch.field(name).type not in (weir.UTF8, weir.BINARY, weir.INT64):
                raise weir.InvalidInput(f"mask: column `{name}` must be utf8, binary or int64")
            hashed = []
            for value in batch[name]:
                if value is None:
                    hashed.append(None)
                    continue
                digest = salted.copy()
                digest.update(value if isinstance(value, bytes) else str(value).encode())
                hashed.append(digest.hexdigest())
            batch = batch.with_column(name, hashed, weir.UTF8)
        return batch
