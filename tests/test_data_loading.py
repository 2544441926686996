import json

import pytest
from conftest import preference_rows, write_jsonl

from qrl.data.records import DataError, load_preferences, read_records


def test_jsonl_json_parquet_and_saved_dataset_read_alike(tmp_path):
    rows = preference_rows(3)
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    js = tmp_path / "p.json"
    js.write_text(json.dumps(rows))
    from datasets import Dataset

    ds = Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in (jsonl, js, tmp_path / "p.parquet", tmp_path / "saved"):
        assert load_preferences(path) == rows, path
    assert read_records(jsonl)[1].where == f"{jsonl}:2"


def test_text_pairs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "extra": 1}])
    assert load_preferences(path) == [{"prompt": "q", "chosen": "a", "rejected": "b"}]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(preference_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=f"{path}:2: malformed JSON"):
        load_preferences(path)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen' must be text or a list"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt, chosen and rejected must all be text or all be messages"),
    ],
)
def test_bad_rows(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=f"{path}:2: {message}"):
        load_preferences(path)


def test_mixed_forms_and_empty_and_unknown(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, preference_rows(1)[0]])
    with pytest.raises(DataError, match="conversational pair in a file of text pairs"):
        load_preferences(path)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "e.jsonl")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(DataError, match="unknown data format"):
        read_records(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
