"""A running total per key, kept in weir's keyed state (the same transform
is in ../running-total-rust and ../running-total-js).

Adds the int64 column `output` (default `running_total`): for each row, the
sum of the `amount` column (default `amount`) over every row with the same
`key` (default `customer`) so far, this one included, across batches, runs,
reloads and crashes. A null key gets a null total; a null amount counts as 0.

One state read and one write per batch: the batch's distinct keys are read
with `get_json_many` and written back with `put_json_many`.
"""

import weir


def _names():
    config = weir.config()
    return (
        config.get("key", "customer"),
        config.get("amount", "amount"),
        config.get("output", "running_total"),
    )


class Transform(weir.Transformer):
    def reads(self):
        key, amount, _ = _names()
        return [key, amount]

    def process(self, batch: weir.Batch) -> weir.Batch:
        key, amount, output = _names()
        keys, amounts = batch[key], batch[amount]
        distinct = sorted({k for k in keys if k is not None})
        totals = {
            k: (0 if stored is None else stored)
            for k, stored in zip(distinct, weir.state.get_json_many(distinct))
        }
        running = []
        for k, a in zip(keys, amounts):
            if k is None:
                running.append(None)
                continue
            totals[k] += 0 if a is None else a
            running.append(totals[k])
        weir.state.put_json_many(totals.items())
        return batch.with_column(output, running, weir.INT64)
