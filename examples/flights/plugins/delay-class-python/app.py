"""The flights example's delay-class stage in Python (the same transform is
in ../delay-class-rust and ../delay-class-js).

Adds the text column `column`: the label of the first `when_null` entry
whose column is null on the row; else, for a non-null `source` value `v`,
`labels[i]` for the first `i` with `v <= breaks[i]`, or the last label;
else null.

Written with the host's compute kernels (`weir.Col`): no column crosses
into Python and no Python loop runs per row; the label column is built on
the host and spliced into the output there.
"""

import weir


class Transform(weir.Transformer):
    def reads(self):
        # Nothing is sent: the kernels reach the columns on the host.
        return []

    def process(self, batch: weir.Batch) -> weir.Batch:
        config = weir.config()
        breaks, labels = config["breaks"], config["labels"]
        if len(labels) != len(breaks) + 1:
            raise weir.InvalidConfig("labels: needs one more entry than breaks")
        label = batch.col(config["source"]).bucket(breaks).lookup(labels)
        # The first guard wins, so it is applied last (outermost).
        for guard in reversed(config.get("when_null", [])):
            label = weir.if_else(batch.col(guard["column"]).is_null(), guard["label"], label)
        return batch.with_column(config["column"], label)
