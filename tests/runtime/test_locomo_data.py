"""deltamem.data.locomo on small hand-made LoCoMo-format samples."""

from __future__ import annotations

import json

import pytest

from deltamem.data import is_locomo, load_locomo, locomo_messages, read_messages_file
from deltamem.runtime.render import check_messages


def sample(sample_id="conv-1", a="Caroline", b="Melanie"):
    return {
        "sample_id": sample_id,
        "conversation": {
            "speaker_a": a,
            "speaker_b": b,
            "session_2_date_time": "1:56 pm on 8 May, 2023",
            "session_2": [
                {"speaker": a, "dia_id": "D2:1", "text": "I went to a support group yesterday."},
                {"speaker": b, "dia_id": "D2:2", "text": "That sounds brave!", "blip_caption": "a photo of a sunset"},
                {"speaker": a, "dia_id": "D2:3", "text": "   "},
            ],
            "session_10_date_time": "9:00 am on 1 July, 2023",
            "session_10": [{"speaker": b, "dia_id": "D10:1", "text": "I painted a lake last week."}],
            "session_1_date_time": "7:55 pm on 7 May, 2023",
            "session_1": [{"speaker": a, "dia_id": "D1:1", "text": "Hi Mel!"},
                          {"speaker": "Stranger", "dia_id": "D1:2", "text": "Who are you?"}],
        },
        "qa": [{"question": "What did Melanie paint?", "answer": "a lake", "evidence": ["D10:1"], "category": 1}],
    }


def test_locomo_messages_roles_names_timestamps_and_order():
    msgs = locomo_messages(sample())
    assert [m["dia_id"] for m in msgs] == ["D1:1", "D1:2", "D2:1", "D2:2", "D10:1"]  # numeric session order
    assert [m["role"] for m in msgs] == ["user", "user", "user", "assistant", "assistant"]
    assert [m["name"] for m in msgs] == ["Caroline", "Stranger", "Caroline", "Melanie", "Melanie"]
    assert msgs[0]["timestamp"] == "7:55 pm on 7 May, 2023"
    assert msgs[2]["timestamp"] == "1:56 pm on 8 May, 2023"
    assert msgs[4]["timestamp"] == "9:00 am on 1 July, 2023"
    assert msgs[3]["content"] == "That sounds brave! [shares a photo: a photo of a sunset]"
    assert all(m["content"].strip() for m in msgs)  # blank turns are dropped
    assert check_messages(msgs)  # valid session input


def test_locomo_messages_errors_name_the_source():
    assert is_locomo(sample()) and not is_locomo([]) and not is_locomo({"conversation": {}})
    with pytest.raises(ValueError, match="src: not a LoCoMo sample"):
        locomo_messages({"foo": 1}, "src")
    bad = sample()
    bad["conversation"]["session_1"][0] = {"speaker": "Caroline"}
    with pytest.raises(ValueError, match=r"src: conversation.session_1\[0\] needs 'speaker' and 'text'"):
        locomo_messages(bad, "src")
    bad["conversation"]["session_1"] = "nope"
    with pytest.raises(ValueError, match="session_1 must be a list"):
        locomo_messages(bad, "src")


def write(tmp_path, obj, name="data.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_read_messages_file_formats(tmp_path):
    plain = [{"role": "user", "content": "hi"}]
    assert read_messages_file(write(tmp_path, plain)) == plain
    one = read_messages_file(write(tmp_path, sample()))
    assert len(one) == 5 and all("dia_id" not in m for m in one)
    assert one[0] == {"role": "user", "content": "Hi Mel!", "name": "Caroline", "timestamp": "7:55 pm on 7 May, 2023"}
    assert read_messages_file(write(tmp_path, [sample()])) == one  # a one-sample list needs no --conversation
    two = write(tmp_path, [sample("conv-1"), sample("conv-2", a="Jon", b="Gina")])
    picked = read_messages_file(two, "conv-2")
    assert picked[0]["name"] == "Jon" and picked[0]["role"] == "user"
    numeric = write(tmp_path, [sample(26), sample(30)], "numeric.json")  # ids as the CLI passes them: strings
    assert read_messages_file(numeric, "30") == read_messages_file(numeric, 30)


def test_read_messages_file_errors_name_the_file(tmp_path):
    bad_json = write(tmp_path, "[{not json", "bad.json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_messages_file(bad_json)
    two = write(tmp_path, [sample("conv-1"), sample("conv-2")], "two.json")
    with pytest.raises(ValueError, match=r"two.json holds 2 LoCoMo conversations \(conv-1, conv-2\).*--conversation"):
        read_messages_file(two)
    with pytest.raises(ValueError, match="two.json: no LoCoMo conversation with sample_id 'conv-9'"):
        read_messages_file(two, "conv-9")
    obj = write(tmp_path, {"hello": 1}, "obj.json")
    with pytest.raises(ValueError, match="obj.json: expected a JSON list"):
        read_messages_file(obj)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_messages_file(tmp_path / "missing.json")
    broken = sample()
    broken["conversation"]["session_2"][0] = "just text"
    with pytest.raises(ValueError, match=r"broken.json: conversation.session_2\[0\]"):
        read_messages_file(write(tmp_path, broken, "broken.json"))


def test_load_locomo(tmp_path):
    data = load_locomo(write(tmp_path, [sample("a"), sample("b")]))
    assert [s["sample_id"] for s in data] == ["a", "b"]
    assert load_locomo(write(tmp_path, sample("c")))[0]["sample_id"] == "c"
    with pytest.raises(ValueError, match="x.json: not valid JSON"):
        load_locomo(write(tmp_path, "{", "x.json"))
    with pytest.raises(ValueError, match=r"y.json: sample \[1\] lacks 'sample_id'"):
        s = sample()
        del s["sample_id"]
        load_locomo(write(tmp_path, [sample(), s], "y.json"))
    with pytest.raises(ValueError, match=r"z.json: sample \[0\] lacks 'conversation.speaker_a'"):
        load_locomo(write(tmp_path, [{"sample_id": 1}], "z.json"))
    with pytest.raises(ValueError, match="w.json: expected a list"):
        load_locomo(write(tmp_path, [], "w.json"))
    with pytest.raises(ValueError, match=r"q.json: sample \[0\] field 'qa' must be a list"):
        s = sample()
        s["qa"] = {}
        load_locomo(write(tmp_path, [s], "q.json"))
