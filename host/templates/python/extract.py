"""`{{name}}`: a weir extractor. Parses `key=value` lines into a batch of two
text columns, `key` and `value`; blank lines and `#` comments are skipped,
and a line without `=` is a parse error naming its number."""

import weir


class Extract(weir.Extractor):
    def process(self, data: bytes, source_name: str, content_type: str) -> weir.Batch:
        keys, values = [], []
        for number, line in enumerate(data.decode().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise weir.ParseError(f"{source_name} line {number}: no `=`")
            key, value = line.split("=", 1)
            keys.append(key.strip())
            values.append(value.strip())
        return weir.Batch.from_columns({"key": keys, "value": values}, {"key": weir.UTF8, "value": weir.UTF8})
