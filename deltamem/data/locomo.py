"""LoCoMo-format conversations (snap-research/locomo) -> chat messages, and message files.

A LoCoMo sample has `sample_id`, `conversation` (`speaker_a`, `speaker_b`,
`session_N_date_time`, `session_N` = turns with `speaker`, `dia_id`, `text`,
optional `blip_caption`) and `qa`. Speaker A becomes the "user" role and
speaker B the "assistant" role; each message keeps the speaker's name and the
session date as its timestamp.
"""

from __future__ import annotations

import json
import os
import re

_SESSION = re.compile(r"^session_(\d+)$")


def is_locomo(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("conversation"), dict) and "speaker_a" in obj["conversation"]


def locomo_messages(sample: dict, source: str = "LoCoMo sample") -> list[dict]:
    """All turns of a LoCoMo sample, in session order, as chat messages (with `dia_id` kept)."""
    if not is_locomo(sample):
        raise ValueError(f"{source}: not a LoCoMo sample (needs 'conversation' with 'speaker_a')")
    conv = sample["conversation"]
    roles = {conv["speaker_a"]: "user", conv.get("speaker_b"): "assistant"}
    sessions = sorted((int(m.group(1)), k) for k in conv if (m := _SESSION.match(k)))
    out = []
    for n, key in sessions:
        date = conv.get(f"session_{n}_date_time")
        turns = conv[key]
        if not isinstance(turns, list):
            raise ValueError(f"{source}: conversation.{key} must be a list of turns")
        for j, t in enumerate(turns):
            if not isinstance(t, dict) or not isinstance(t.get("text"), str) or "speaker" not in t:
                raise ValueError(f"{source}: conversation.{key}[{j}] needs 'speaker' and 'text'")
            text = t["text"]
            if t.get("blip_caption"):
                text += f" [shares a photo: {t['blip_caption']}]"
            if not text.strip():
                continue
            out.append({"role": roles.get(t["speaker"], "user"), "content": text, "name": t["speaker"],
                        "timestamp": date, "dia_id": t.get("dia_id")})
    return out


def load_locomo(path: str | os.PathLike) -> list[dict]:
    """Read a LoCoMo JSON file (a list of samples); errors name the file and the first bad field."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a list of LoCoMo samples")
    for i, s in enumerate(data):
        if not is_locomo(s):
            raise ValueError(f"{path}: sample [{i}] lacks 'conversation.speaker_a'")
        if "sample_id" not in s:
            raise ValueError(f"{path}: sample [{i}] lacks 'sample_id'")
        if not isinstance(s.get("qa", []), list):
            raise ValueError(f"{path}: sample [{i}] field 'qa' must be a list")
    return data


def locomo_plain_texts(path: str | os.PathLike, conversations: list[str], turns: int | None = None) -> list[str]:
    """Plain text of the named conversations: one string each, a `Speaker: text` line per turn
    (the first `turns` turns, or all)."""
    samples = load_locomo(path)
    out = []
    for s in samples:
        if s["sample_id"] in conversations:
            msgs = locomo_messages(s, os.fspath(path))[:turns]
            out.append("\n".join(f"{m['name']}: {m['content']}" for m in msgs))
    missing = sorted(set(conversations) - {s["sample_id"] for s in samples})
    if missing:
        raise ValueError(f"{os.fspath(path)}: no LoCoMo conversation(s) {', '.join(missing)}")
    return out


def read_messages_file(path: str | os.PathLike, conversation: str | None = None) -> list[dict]:
    """Messages from a JSON file: a list of chat messages, or LoCoMo (one sample, or a list of
    samples with `conversation` naming the sample id; a single-sample list needs none)."""
    path = os.fspath(path)
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if is_locomo(data):
        return [_strip(m) for m in locomo_messages(data, path)]
    if isinstance(data, list) and data and all(is_locomo(s) for s in data):
        if conversation is None and len(data) > 1:
            ids = ", ".join(str(s.get("sample_id")) for s in data)
            raise ValueError(f"{path} holds {len(data)} LoCoMo conversations ({ids}); choose one with --conversation")
        pick = [s for s in data if conversation is None or str(s.get("sample_id")) == str(conversation)]
        if not pick:
            raise ValueError(f"{path}: no LoCoMo conversation with sample_id {conversation!r}")
        return [_strip(m) for m in locomo_messages(pick[0], path)]
    if isinstance(data, list):
        return data
    raise ValueError(f"{path}: expected a JSON list of messages or a LoCoMo conversation")


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "dia_id"}
