"""`{{name}}`: a weir transform. Upper-cases the text columns named in the
stage's config, e.g. `config = { columns = ["origin"] }`."""

import weir


class Transform(weir.Transformer):
    def process(self, batch: weir.Batch) -> weir.Batch:
        for name in weir.config().get("columns", []):
            upper = [None if value is None else value.upper() for value in batch[name]]
            batch = batch.with_column(name, upper, weir.UTF8)
        return batch
