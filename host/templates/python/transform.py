"""`{{name}}`: a weir transform. Upper-cases the text columns named in the
stage's config, e.g. `config = { columns = ["origin"] }`."""

import weir


class Transform(weir.Transformer):
    def reads(self):
        # Only these columns are sent to the plugin; the others stay on the host.
        return weir.config().get("columns", [])

    def process(self, batch: weir.Batch) -> weir.Batch:
        for name in weir.config().get("columns", []):
            upper = [None if value is None else value.upper() for value in batch[name]]
            batch = batch.with_column(name, upper, weir.UTF8)
        # Derived from the input: only the replaced columns go back.
        return batch
