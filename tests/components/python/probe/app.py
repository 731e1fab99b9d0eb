"""Test transform for the Python SDK.

Config `mode`: "columns" (default) converts every column to a Python list
and back; "rows" rebuilds the batch from row dicts; "derive" appends
columns computed from Python values; "kernels" appends columns computed
with the host's compute kernels (see tests/all/languages.rs) and keeps the
rows whose boolean is true. A column `action` triggers
misbehaviour on the batch holding: "loop" (spins forever), "bloat"
(allocates without end), "raise" (a ValueError), "invalid" (an InvalidInput
on purpose), "log" (a host log line).
"""

import weir


def misbehave(batch: weir.Batch) -> None:
    if "action" not in batch:
        return
    actions = set(batch["action"])
    if "loop" in actions:
        while True:
            pass
    if "bloat" in actions:
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if "raise" in actions:
        raise ValueError("boom: raised on purpose in " + ",".join(sorted(a for a in actions if a)))
    if "invalid" in actions:
        raise weir.InvalidInput("column `action` asked for invalid-input")
    if "log" in actions:
        weir.info("hello from python")


class Transform(weir.Transformer):
    def reads(self):
        # Config `reads` (optional): the columns the stage declares it reads.
        return weir.config().get("reads")

    def process(self, batch: weir.Batch) -> weir.Batch:
        misbehave(batch)
        mode = weir.config().get("mode", "columns")
        if mode == "columns":
            for field in batch.schema:
                batch = batch.with_column(field.name, batch[field.name], field.type)
            return batch
        if mode == "rows":
            types = {field.name: field for field in batch.schema}
            return weir.Batch.from_rows(list(batch.rows()), types).select(batch.column_names)
        if mode == "derive":
            ints = batch["int64"]
            texts = batch["utf8"]
            return (
                batch.with_column("int64_doubled", [None if v is None else v * 2 for v in ints])
                .with_column("utf8_upper", [None if t is None else t.upper() for t in texts])
                .with_column("is_null", [v is None for v in ints])
                .filter([v is None or v % 2 == 0 for v in ints])
            )
        if mode == "kernels":
            i, f, s = batch.col("int64"), batch.col("float64"), batch.col("utf8")
            if i.to_list() != batch["int64"]:
                raise ValueError("Col.to_list differs from the batch's column")
            return (
                batch.with_column("k_gt", i > 0)
                .with_column("k_mix", 1 - i * 0.5 + f)
                .with_column("k_logic", (batch.col("boolean") | (f > 100.5)) & ~s.is_null())
                .with_column("k_upper", s.upper())
                .with_column("k_len", s.str_len())
                .with_column("k_fill", i.fill_null(-1))
                .with_column("k_sha", s.sha256_hex("salt"))
                .with_column("k_if", weir.if_else(i > 0, "pos", s))
                .with_column("k_class", f.bucket([10, 50.5]).lookup(["low", "mid", "high"]))
                .filter(batch.col("boolean"))
            )
        raise weir.InvalidConfig(f"mode: unknown {mode!r}")
