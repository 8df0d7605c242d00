"""Edit-dataset loaders and the edit data module, on small JSON files written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prune_lit.data.counterfact import load_counterfact, load_fact_file
from prune_lit.data.edit_datamodule import EditDataModule, with_borrowed_locality
from prune_lit.data.edit_io import EditDataError
from prune_lit.data.requests import EditRequest
from prune_lit.data.zsre import load_zsre


def cf_record(i: int, **over) -> dict:
    rec = {
        "case_id": i,
        "prompt": f"The mother tongue of Person{i} is",
        "subject": f"Person{i}",
        "target_new": "English",
        "ground_truth": "French",
        "rephrase_prompt": f"Person{i} speaks the language of",
        "locality_prompt": "Michel Rocard is a native speaker of",
        "locality_ground_truth": "French",
    }
    rec.update(over)
    return rec


def zsre_record(i: int, **over) -> dict:
    rec = {
        "subject": f"Thing{i}",
        "src": f"When was the inception of Thing{i}?",
        "pred": "2011",
        "rephrase": f"When was Thing{i} launched?",
        "alt": " 2006",
        "answers": ["1998", "1999"],
        "loc": "nq question: who sang the song in the end",
        "loc_ans": "Linkin Park",
        "cond": "x",
    }
    rec.update(over)
    return rec


def write(tmp_path: Path, rel: str, records: list) -> Path:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def test_counterfact_good_records(tmp_path: Path) -> None:
    recs = [cf_record(i) for i in range(3)]
    recs[1] = cf_record(1, rephrase_prompt=["Person1 speaks", "Person1 writes in"], locality_prompt=["A is", "B is"], locality_ground_truth="French")
    write(tmp_path, "counterfact/counterfact-edit.json", recs)
    reqs = load_counterfact("edit", data_dir=tmp_path)
    assert [r.case_id for r in reqs] == [0, 1, 2]
    r0 = reqs[0]
    assert isinstance(r0, EditRequest)
    assert (r0.prompt, r0.subject, r0.target_new, r0.ground_truth) == ("The mother tongue of Person0 is", "Person0", "English", "French")
    assert r0.rephrase_prompts == ("Person0 speaks the language of",)
    assert r0.locality_prompts == ("Michel Rocard is a native speaker of",) and r0.locality_answers == ("French",)
    # list fields stay lists; one locality answer is shared by all locality prompts
    assert reqs[1].rephrase_prompts == ("Person1 speaks", "Person1 writes in")
    assert reqs[1].locality_answers == ("French", "French")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"target_new": None}, "'target_new'"),
        ({"rephrase_prompt": 3}, "'rephrase_prompt'"),
        ({"locality_prompt": ["a", "b"], "locality_ground_truth": ["x", "y", "z"]}, "locality"),
    ],
)
def test_counterfact_malformed_record_names_file_and_index(tmp_path: Path, bad: dict, message: str) -> None:
    recs = [cf_record(i) for i in range(4)]
    recs[2] = cf_record(2, **bad)
    path = write(tmp_path, "counterfact/counterfact-val.json", recs)
    with pytest.raises(EditDataError) as err:
        load_counterfact("val", data_dir=tmp_path)
    assert str(path) in str(err.value) and "record 2" in str(err.value) and message in str(err.value)


def test_counterfact_missing_field(tmp_path: Path) -> None:
    recs = [cf_record(i) for i in range(3)]
    del recs[1]["subject"]
    path = write(tmp_path, "counterfact/counterfact-train.json", recs)
    with pytest.raises(EditDataError, match="record 1: missing field 'subject'") as err:
        load_counterfact("train", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_subject_not_in_prompt(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-edit.json", [cf_record(0), cf_record(1, subject="Nobody")])
    with pytest.raises(EditDataError, match=r"record 1: subject 'Nobody' does not occur"):
        load_counterfact("edit", data_dir=tmp_path)
    write(tmp_path, "zsre/zsre_mend_train-1k.json", [zsre_record(0, subject="Nobody")])
    with pytest.raises(EditDataError, match=r"zsre_mend_train-1k.json: record 0: subject"):
        load_zsre("train", data_dir=tmp_path)


def test_limit_seed_reproducible(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-edit.json", [cf_record(i) for i in range(50)])
    ids = lambda reqs: [r.case_id for r in reqs]  # noqa: E731
    assert ids(load_counterfact("edit", tmp_path, limit=5)) == [0, 1, 2, 3, 4]
    a = ids(load_counterfact("edit", tmp_path, limit=10, seed=3, shuffle=True))
    assert a == ids(load_counterfact("edit", tmp_path, limit=10, seed=3, shuffle=True))
    assert a != ids(load_counterfact("edit", tmp_path, limit=10, seed=4, shuffle=True))
    assert a != list(range(10)) and len(set(a)) == 10
    # a larger limit with the same seed extends the same order
    assert ids(load_counterfact("edit", tmp_path, limit=20, seed=3, shuffle=True))[:10] == a
    with pytest.raises(ValueError, match="split"):
        load_counterfact("test", tmp_path)


def test_cache_rereads_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path, "counterfact/counterfact-edit.json", [cf_record(0)])
    first = load_counterfact("edit", tmp_path)
    assert load_counterfact("edit", tmp_path) == first
    path.write_text(json.dumps([cf_record(0), cf_record(1), cf_record(2)]))
    assert len(load_counterfact("edit", tmp_path)) == 3


def test_zsre_mapping(tmp_path: Path) -> None:
    recs = [zsre_record(i) for i in range(3)]
    recs[1]["alt"] = ""  # EasyEdit skips these (two occur in the real train file)
    write(tmp_path, "zsre/zsre_mend_eval_portability_gpt4.json", recs)
    reqs = load_zsre("eval", data_dir=tmp_path)
    assert [r.case_id for r in reqs] == [0, 2]  # case_id = record index
    r = reqs[0]
    assert r.prompt == "When was the inception of Thing0?" and r.subject == "Thing0"
    assert r.target_new == "2006" and r.ground_truth == "1998"  # alt stripped, answers[0]
    assert r.rephrase_prompts == ("When was Thing0 launched?",)
    assert r.locality_prompts == ("nq question: who sang the song in the end",)  # prefix kept, as EasyEdit feeds it
    assert r.locality_answers == ("Linkin Park",)


@pytest.mark.parametrize("bad", [{"answers": []}, {"answers": "1998"}, {"loc": None}])
def test_zsre_malformed(tmp_path: Path, bad: dict) -> None:
    recs = [zsre_record(0), zsre_record(1, **bad)]
    path = write(tmp_path, "zsre/zsre_mend_eval_portability_gpt4.json", recs)
    with pytest.raises(EditDataError) as err:
        load_zsre("eval", data_dir=tmp_path)
    assert f"{path}: record 1" in str(err.value)


def test_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "counterfact" / "counterfact-edit.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"case_id": 0}')
    with pytest.raises(EditDataError, match="expected a JSON list"):
        load_counterfact("edit", tmp_path)


def test_datamodule_batches(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-edit.json", [cf_record(i) for i in range(30)])
    dm = EditDataModule(dataset="counterfact", num_edits=7, batch_size=3, data_dir=str(tmp_path))
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(isinstance(r, EditRequest) for b in batches for r in b)
    assert [r.case_id for b in batches for r in b] == [r.case_id for r in dm.all_requests] == list(range(7))
    # fixed order: a second pass yields the same batches
    assert [[r.case_id for r in b] for b in dm.test_dataloader()] == [[r.case_id for r in b] for b in batches]
    shuffled = EditDataModule(num_edits=7, data_dir=str(tmp_path), shuffle=True, seed=1)
    assert [r.case_id for r in shuffled.all_requests] != list(range(7))
    with pytest.raises(ValueError, match="dataset"):
        EditDataModule(dataset="wiki")


def test_datamodule_train_val(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-train.json", [cf_record(i) for i in range(10)])
    write(tmp_path, "counterfact/counterfact-val.json", [cf_record(100 + i) for i in range(6)])
    dm = EditDataModule(data_dir=str(tmp_path), train_batch_size=4, val_limit=5)
    train = [r.case_id for b in dm.train_dataloader() for r in b]
    assert len(train) == 8 and set(train) <= set(range(10))  # drop_last: 2 full batches
    assert [len(b) for b in dm.val_dataloader()] == [4, 1]
    # zsRE: "edit" means its eval file; val is the tail of the train file, left out of training
    write(tmp_path, "zsre/zsre_mend_eval_portability_gpt4.json", [zsre_record(i) for i in range(4)])
    write(tmp_path, "zsre/zsre_mend_train-1k.json", [zsre_record(i) for i in range(20)])
    dz = EditDataModule(dataset="zsre", split="edit", num_edits=None, data_dir=str(tmp_path), train_batch_size=1, val_limit=None)
    assert len(dz.all_requests) == 4
    tr = {r.case_id for b in dz.train_dataloader() for r in b}
    va = {r.case_id for b in dz.val_dataloader() for r in b}
    assert tr == set(range(18)) and va == {18, 19}


def test_a_later_val_slice_holds_cases_the_first_one_does_not(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-train.json", [cf_record(i) for i in range(4)])
    write(tmp_path, "counterfact/counterfact-val.json", [cf_record(100 + i) for i in range(6)])
    first = EditDataModule(data_dir=str(tmp_path), val_limit=3).train_val_requests()[1]
    later = EditDataModule(data_dir=str(tmp_path), val_limit=3, val_start=3).train_val_requests()[1]
    assert [r.case_id for r in first] == [100, 101, 102] and [r.case_id for r in later] == [103, 104, 105]
    with pytest.raises(EditDataError, match="val_start=6"):
        EditDataModule(data_dir=str(tmp_path), val_start=6).train_val_requests()


def test_training_edits_can_borrow_other_cases_locality_prompts(tmp_path: Path) -> None:
    records = [cf_record(i, locality_prompt=f"Loc{i} speaks", locality_ground_truth=f"Lang{i}") for i in range(10)]
    write(tmp_path, "counterfact/counterfact-train.json", records)
    write(tmp_path, "counterfact/counterfact-val.json", [cf_record(100 + i) for i in range(3)])
    dm = EditDataModule(data_dir=str(tmp_path), train_batch_size=5, train_locality_per_edit=3)
    seen = [r for b in dm.train_dataloader() for r in b]
    assert len(seen) == 10
    for r in seen:
        own = int(r.case_id)
        assert len(r.locality_prompts) == 3 and r.locality_prompts[0] == f"Loc{own} speaks"
        lenders = [int(p[3:].split()[0]) for p in r.locality_prompts]
        assert len(set(lenders)) == 3  # never itself, never one lender twice
        assert list(r.locality_answers) == [f"Lang{i}" for i in lenders]  # each prompt keeps its own answer
    # validation is not augmented (its locality stays comparable across settings), nor is what the cache keys on
    assert all(len(r.locality_prompts) == 1 for b in dm.val_dataloader() for r in b)
    assert all(len(r.locality_prompts) == 1 for r in dm.train_val_requests()[0])
    # the same seed borrows the same prompts; 1 is the identity
    train = dm.train_val_requests()[0]
    assert with_borrowed_locality(train, 3, seed=0) == with_borrowed_locality(train, 3, seed=0)
    assert with_borrowed_locality(train, 1) == train
    with pytest.raises(ValueError, match="train_locality_per_edit"):
        EditDataModule(data_dir=str(tmp_path), train_locality_per_edit=0)


def test_real_files_load() -> None:
    """The shared data files parse completely (skipped where they are not present)."""
    try:
        cf = load_counterfact("val")
        zs = load_zsre("train")
    except FileNotFoundError:
        pytest.skip("shared data not available")
    assert len(cf) == 1919 and len(zs) == 998  # two zsRE train records have an empty 'alt'


# ---------------------------------------------------------------- your own facts


def test_fact_file_json_and_jsonl_with_optional_fields(tmp_path: Path) -> None:
    minimal = {"prompt": "The capital of Freedonia is", "subject": "Freedonia", "target_new": " Fredville"}
    full = cf_record(7, rephrase_prompt=["Person7 speaks", "Person7 talks in"])
    jsonl = tmp_path / "facts.jsonl"
    jsonl.write_text(json.dumps(minimal) + "\n\n" + json.dumps(full) + "\n")
    a, b = load_fact_file(jsonl)
    assert (a.case_id, a.target_new, a.ground_truth, a.rephrase_prompts, a.locality_prompts) == (0, "Fredville", "", (), ())
    assert b.case_id == 7 and b.ground_truth == "French" and len(b.rephrase_prompts) == 2 and b.locality_answers == ("French",)
    as_list = write(tmp_path, "facts.json", [minimal, full])
    assert load_fact_file(as_list) == [a, b]
    dm = EditDataModule(dataset=str(jsonl), num_edits=None)
    dm.setup("test")
    assert [r.case_id for b in dm.test_dataloader() for r in b] == [0, 7]


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"prompt": "P is", "subject": "P", "target_new": "x"}\n{"prompt": "Q is", "subject": "Q"\n', "record 1 (line 2): not valid JSON"),
        ('{"prompt": "P is", "subject": "P"}\n', "record 0 (line 1): missing field 'target_new'"),
        ('{"prompt": "P is", "subject": "Z", "target_new": "x"}\n', "record 0 (line 1): subject 'Z' does not occur"),
        ('{"prompt": "P is", "subject": "P", "target_new": "x", "locality_prompt": "L is"}\n', "needs 'locality_ground_truth'"),
        ('{"prompt": "P is", "subject": "P", "target_new": "x", "case_id": 3}\n{"prompt": "Q is", "subject": "Q", "target_new": "y", "case_id": 3}\n', "record 1: case_id 3 repeats record 0's"),
        ('[1, 2]\n', "record 0 (line 1): expected an object, got list"),
        ("\n", "holds no records"),
    ],
)
def test_fact_file_errors_name_file_and_record(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text(content)
    with pytest.raises(EditDataError) as err:
        load_fact_file(path)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_fact_file_missing_or_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(EditDataError, match="no such file"):
        EditDataModule(dataset=str(tmp_path / "nope.jsonl")).setup("test")
    with pytest.raises(ValueError, match="json/.jsonl"):
        EditDataModule(dataset=str(tmp_path / "facts.csv"))
    dm = EditDataModule(dataset=str(write(tmp_path, "f.json", [cf_record(0)])))
    with pytest.raises(EditDataError, match="not used to train MEND"):
        dm.train_dataloader()


def test_num_edits_beyond_the_split_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "counterfact/counterfact-edit.json", [cf_record(i) for i in range(5)])
    dm = EditDataModule(num_edits=20, data_dir=str(tmp_path))
    with pytest.raises(EditDataError, match=r"num_edits=20 but counterfact split 'edit' has only 5 cases.*null") as err:
        dm.setup("test")
    assert "\n" not in str(err.value)
    assert len(EditDataModule(num_edits=5, data_dir=str(tmp_path)).all_requests) == 5
    assert len(EditDataModule(num_edits=None, data_dir=str(tmp_path)).all_requests) == 5
