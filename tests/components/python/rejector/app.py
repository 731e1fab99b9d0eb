"""Test validator for the Python SDK: it reads no column and fails rows
only through the host's kernels, `negative` with `reject_each` (each
message names the row's `x`) and `zero` with `reject` (one message)."""

import weir


class Validate(weir.Validator):
    def reads(self):
        return []

    def process(self, batch: weir.Batch):
        x = batch.col("x")
        weir.reject_each(x < 0, "negative", "x = ", x, " is below 0")
        weir.reject(x == 0, "zero", "x is zero")
        return []
