"""The flights example's delay-class stage in Python (the same transform is
in ../delay-class-rust and ../delay-class-js).

Adds the text column `column`: the label of the first `when_null` entry
whose column is null on the row; else, for a non-null `source` value `v`,
`labels[i]` for the first `i` with `v <= breaks[i]`, or the last label;
else null.
"""

from bisect import bisect_left

import weir


class Transform(weir.Transformer):
    def reads(self):
        # Only these columns are sent; only the new column comes back.
        config = weir.config()
        return [config["source"]] + [g["column"] for g in config.get("when_null", [])]

    def process(self, batch: weir.Batch) -> weir.Batch:
        config = weir.config()
        breaks, labels = config["breaks"], config["labels"]
        if len(labels) != len(breaks) + 1:
            raise weir.InvalidConfig("labels: needs one more entry than breaks")
        source = batch[config["source"]]
        guards = [(batch[g["column"]], g["label"]) for g in config.get("when_null", [])]
        out = []
        for row, value in enumerate(source):
            label = next((label for column, label in guards if column[row] is None), None)
            if label is None and value is not None:
                # First i with value <= breaks[i]: bisect_left on sorted breaks.
                label = labels[bisect_left(breaks, value)]
            out.append(label)
        return batch.with_column(config["column"], out, weir.UTF8)
