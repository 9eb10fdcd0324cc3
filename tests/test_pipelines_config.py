"""Declared pipelines: mistakes fail at load (file and key named), routing by prefix, the
legacy [pipeline] as the default; dialects, JSON Lines values, user code bounded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from mrbatch.config.initialize import sample_bytes
from mrbatch.config.settings import load_config
from mrbatch.errors import ConfigError, UserCodeError
from mrbatch.pipeline.chunk import Extras, process_chunk
from mrbatch.pipeline.jsonl import parse_jsonl
from mrbatch.pipeline.parse import Dialect
from mrbatch.pipeline.schema import RecordSchema
from mrbatch.pipeline.usercode import call_bounded

RULES = "import polars as pl\n\ndef upper(frame):\n    return frame\n"


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "mrbatch.toml"
    (tmp_path / "pipeline").mkdir(exist_ok=True)
    (tmp_path / "pipeline" / "orders.schema.json").write_bytes(sample_bytes("orders.schema.json"))
    (tmp_path / "pipeline" / "my_rules.py").write_text(RULES)
    path.write_text('regions = ["a-1", "b-1"]\n' + extra)
    return path


P = '[pipelines.ev]\nprefix = "input/ev/"\nschema = "pipeline/orders.schema.json"\n'


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (P.replace("input/ev/", "ev/"), "pipelines.ev.prefix", "not an input prefix"),
        (P + 'format = "xml"\n', "pipelines.ev.format", "Input should be"),
        (P + 'transforms = ["nomodule"]\n', "pipelines.ev.transforms", "not a function"),
        (P + 'transforms = ["absent_mod:f"]\n', "pipelines.ev.transforms[0]", "cannot load"),
        (
            P + 'python_path = ["pipeline"]\ntransforms = ["my_rules:nope"]\n',
            "pipelines.ev.transforms[0]",
            "no function 'nope'",
        ),
        (P + 'checks = [{ expr = "pl.col(", reason = "x" }]\n', "checks[0].expr", "not a polars"),
        (P + 'checks = [{ expr = "1 + 1", reason = "x" }]\n', "checks[0].expr", "not a polars"),
        (P + "checks = [{ expr = \"pl.col('a') > 1\" }]\n", "pipelines.ev.checks", "reason"),
        (P + 'delimiter = ";;"\n', "pipelines.ev.delimiter", "at most 1"),
        (
            P + '[pipelines.ev.api]\nurl = "ftp://x"\nkey = "k"\ncolumns = { a = "b" }\n',
            "pipelines.ev.api.url",
            "http",
        ),
        (P + "[pipelines.ev.file]\nmin_rows = 5\nmax_rows = 1\n", "pipelines.ev.file", "greater"),
        (P + '[pipelines.ev.webhook]\nurl = "nope"\n', "pipelines.ev.webhook.url", "http"),
        (P + P.replace("[pipelines.ev]", "[pipelines.two]"), "pipelines", "also ev's"),
        (P.replace("orders.schema", "nope.schema"), "pipelines.ev.schema", "cannot read"),
        (
            P + '[pipelines.ev.api]\nurl = "http://h/x"\nkey = "uuid"\n'
            'columns = { a = "Country" }\n',
            "pipelines.ev.api.columns",
            "also a property",
        ),
    ],
)
def test_declaration_mistakes_fail_at_load(
    tmp_path: Path, extra: str, key: str, words: str
) -> None:
    path = _config(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and key in message and words in message, message


def test_inputs_go_to_the_longest_prefix_and_the_rest_to_the_default(tmp_path: Path) -> None:
    extra = P + P.replace("[pipelines.ev]", "[pipelines.eu]").replace("input/ev/", "input/ev/eu/")
    config = load_config(_config(tmp_path, extra))
    assert config.spec_for_key("input/ev/a.jsonl").name == "ev"
    assert config.spec_for_key("input/ev/eu/a.csv").name == "eu"
    default = config.spec_for_key("input/orders.csv")
    assert default.name == "default" and default.enrichment is None and default.format == "csv"
    assert config.spec("ev").chunk_rows == config.pipeline.chunk_rows


def test_a_spec_is_resolved_once_and_again_for_a_changed_copy(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, P))
    assert config.spec("ev") is config.spec("ev")
    assert config.spec("default").chunk_rows == config.pipeline.chunk_rows
    smaller = config.pipeline.model_copy(update={"chunk_rows": 7})
    changed = config.model_copy(update={"pipeline": smaller})
    assert changed.spec("default").chunk_rows == changed.spec("ev").chunk_rows == 7
    assert config.spec("default").chunk_rows == config.pipeline.chunk_rows != 7


def test_a_semicolon_dialect_with_single_quotes() -> None:
    schema = RecordSchema.from_dict({"properties": {"a": {}, "b": {}}}, source="s")
    data = b"a;b\n'x;y';2\n3;'it''s'\n"
    out = process_chunk(
        data, schema=schema, enrichment=None, reference=None, first_line=2, source="f",
        dialect=Dialect.of(";", "'"),
    )  # fmt: skip
    assert out.output == b"x;y,2\n3,it's\n" and out.rows_rejected == 0
    tabs = process_chunk(
        b"a\tb\nx\t1\n", schema=schema, enrichment=None, reference=None, first_line=2,
        source="f", dialect=Dialect.of("\t", None),
    )  # fmt: skip
    assert tabs.output == b"x,1\n"


def test_json_lines_values_are_kept_as_written() -> None:
    body = b'{"a": 1.50, "b": true, "c": {"d": [1, 2.0]}}\n\n[1]\nnot json\n{"a": null}\n'
    good, bad = parse_jsonl(body, ["a", "b", "c"], 1, "f")
    assert good.rows() == [(1, 1, "1.50", "true", '{"d":[1,2.0]}'), (4, 5, None, None, None)]
    assert bad.get_column("\0reason").to_list() == [
        "line 3: a JSON list, not an object",
        "line 4: not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ]


def test_user_code_that_raises_or_hangs_is_a_reason(tmp_path: Path) -> None:
    def hang(_frame: object) -> None:
        time.sleep(30)

    def boom(_frame: object) -> None:
        raise KeyError("missing")

    started = time.monotonic()
    with pytest.raises(UserCodeError, match=r"did not return within 0\.3s"):
        call_bounded(hang, (None,), 0.3, "transform m:hang")
    assert time.monotonic() - started < 5
    with pytest.raises(UserCodeError, match="transform m:boom raised KeyError: 'missing'"):
        call_bounded(boom, (None,), 5, "transform m:boom")


def test_count_column_and_output_columns(tmp_path: Path) -> None:
    schema = RecordSchema.from_dict({"properties": {"a": {}, "n": {}}}, source="s")
    out = process_chunk(
        b"a,n\nx,2\ny,2\n", schema=schema, enrichment=None, reference=None, first_line=2,
        source="f", extras=Extras(count_column="n", columns=("n", "a")),
    )  # fmt: skip
    assert out.counts == ["2"] and out.output == b"2,x\n2,y\n"
    with pytest.raises(UserCodeError, match="output column 'z' is not produced"):
        process_chunk(
            b"a,n\nx,2\n", schema=schema, enrichment=None, reference=None, first_line=2,
            source="f", extras=Extras(columns=("z",)),
        )  # fmt: skip
    assert json.dumps(pl.DataFrame().columns) == "[]"
