"""`{{name}}`: a weir validator. Flags rows where a column named in the
stage's config is null, e.g. `config = { required = ["tailnum"] }`; the rule
is `required:COLUMN`."""

import weir


class Validate(weir.Validator):
    def process(self, batch: weir.Batch):
        for name in weir.config().get("required", []):
            for row, value in enumerate(batch[name]):
                if value is None:
                    yield weir.Verdict(row, f"required:{name}", f"{name} is null")
