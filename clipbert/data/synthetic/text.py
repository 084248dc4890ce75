"""Sentence templates: captions, event phrases and questions, all built from a scene's attributes.

Every word the templates can produce is in `TEMPLATE_WORDS`; the tests check each is one token of the
BERT uncased vocabulary, so the tokenizer never splits a colour or shape into pieces.
"""

from __future__ import annotations

import numpy as np

from .scene import DIRECTIONS, PALETTE, SHAPES, SIZES, SPEEDS

_GLUE_WORDS = [
    "a",
    "the",
    "it",
    "then",
    "moves",
    "moving",
    "goes",
    "is",
    "near",
    "turns",
    "enters",
    "leaves",
    "what",
    "color",
    "shape",
    "object",
    "which",
    "way",
    "does",
    "how",
    "many",
    "shapes",
    "are",
    "there",
    "at",
    "end",
    "first",
    "when",
    "early",
    "late",
    "happens",
    "after",
    "gray",
    "move",
    "and",
    "of",
    "enter",
    "leave",
    "colored",
    "that",
    "do",
    "turn",
]
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
TEMPLATE_WORDS = sorted(
    set(PALETTE)
    | set(SHAPES)
    | set(SIZES)
    | set(SPEEDS)
    | set(DIRECTIONS)
    | set(NUMBER_WORDS.values())
    | set(_GLUE_WORDS)
)


def event_phrase(event_type: str, attrs: dict) -> str:
    """Short clause for one event of a video, e.g. 'the circle turns blue'."""
    if event_type == "color_change":
        return f"the {attrs['shape']} turns {attrs['new_color']}"
    if event_type == "enter":
        return f"a {attrs['second_color']} {attrs['second_shape']} enters"
    if event_type == "leave":
        return f"the {attrs['second_color']} {attrs['second_shape']} leaves"
    raise ValueError(f"text: unknown event type {event_type!r}")


def event_order(scene: dict) -> list[str]:
    return [event["type"] for event in scene["events"]]


def planned_event_order(attrs: dict) -> list[str]:
    """Event types in time order from the attributes alone (scene.build_scene times them this way)."""
    kinds = (["color_change"] if attrs["new_color"] else []) + (
        [attrs["second_kind"]] if attrs["second_kind"] != "none" else []
    )
    if len(kinds) == 2 and attrs["first_event"] != "color_change":
        kinds.reverse()
    return kinds


def caption_from_attributes(attrs: dict) -> str:
    """Same text as `full_caption`, before the scene exists (used to keep test captions unique)."""
    return " then ".join([opening(attrs)] + [event_phrase(e, attrs) for e in planned_event_order(attrs)])


def opening(attrs: dict, with_size: bool = True, with_speed: bool = True) -> str:
    """'a large red circle moves left slowly [near a green square]'."""
    size = f"{attrs['size']} " if with_size else ""
    speed = f" {attrs['speed']}" if with_speed else ""
    text = f"a {size}{attrs['color']} {attrs['shape']} moves {attrs['direction']}{speed}"
    if attrs["second_kind"] == "leave":  # the leaving object is there from the start
        text += f" near a {attrs['second_color']} {attrs['second_shape']}"
    return text


def full_caption(scene: dict) -> str:
    """The discriminative caption: appearance, motion, then every event in time order."""
    attrs = scene["attributes"]
    parts = [opening(attrs)] + [event_phrase(e, attrs) for e in event_order(scene)]
    return " then ".join(parts)


def counterfactual_captions(attrs: dict) -> list[str]:
    """Full captions with exactly one of colour, shape or direction changed: each is false for `attrs`."""
    out = []
    for key, values in (("color", PALETTE), ("shape", SHAPES), ("direction", DIRECTIONS)):
        for value in values:
            if value != attrs[key] and value not in (attrs["second_color"], attrs["second_shape"]):
                out.append(caption_from_attributes({**attrs, key: value}))
    return out


def train_captions(scene: dict, rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct paraphrases of the video (the full caption first)."""
    attrs = scene["attributes"]
    events = [event_phrase(e, attrs) for e in event_order(scene)]
    motion = f"{attrs['direction']} {attrs['speed']}"
    candidates = [
        full_caption(scene),
        " then ".join([opening(attrs, with_size=False)] + events),
        f"the {attrs['color']} {attrs['shape']} is moving {motion}",
        f"a {attrs['size']} {attrs['shape']} that is {attrs['color']} goes {motion}",
        " then ".join([f"a {attrs['color']} {attrs['shape']} goes {attrs['direction']}"] + events),
        " and ".join([opening(attrs, with_speed=False)] + events),
    ]
    unique = list(dict.fromkeys(candidates))
    rest = [unique[i] for i in rng.permutation(len(unique) - 1) + 1]
    return [unique[0]] + rest[: max(count - 1, 0)]


def paragraph(scene: dict) -> tuple[list[str], list[list[float]]]:
    """DiDeMo/ActivityNet-style sentences with [start, end] seconds: the opening, then one per event."""
    attrs = scene["attributes"]
    duration = round(scene["duration"], 3)
    starts = [0.0] + [event["time"] for event in scene["events"]]
    ends = starts[1:] + [duration]
    sentences = [opening(attrs)] + [event_phrase(e, attrs) for e in event_order(scene)]
    return sentences, [[round(s, 3), round(e, 3)] for s, e in zip(starts, ends)]


def when_word(time: float, duration: float) -> str:
    """Events are sampled away from the middle (scene._event_times), so this split is unambiguous."""
    return "early" if time < duration / 2 else "late"


def open_questions(scene: dict) -> list[tuple[str, str, str]]:
    """MSRVTT-QA style (question, answer, answer_type) triples; some need several frames or clips."""
    a = scene["attributes"]
    shape = a["shape"]
    qs = [
        (f"what color is the {shape} at first", a["color"], "what"),
        (f"what shape is the {a['color']} object", shape, "what"),
        (f"which way does the {shape} move", a["direction"], "where"),
        (f"how does the {shape} move", a["speed"], "how"),
    ]
    for event in scene["events"]:
        when = when_word(event["time"], scene["duration"])
        if event["type"] == "color_change":
            qs.append((f"what color does the {shape} turn", a["new_color"], "what"))
            qs.append((f"when does the {shape} turn {a['new_color']}", when, "when"))
        else:
            verb = "enters" if event["type"] == "enter" else "leaves"
            qs.append((f"what shape {verb}", a["second_shape"], "what"))
            qs.append((f"when does the {a['second_shape']} {verb[:-1]}", when, "when"))
    at_end = 1 + int(a["second_kind"] == "enter")  # gray distractors are not colored
    qs.append(("how many colored shapes are there at the end", NUMBER_WORDS[at_end], "how"))
    return qs


def _num_distractors(scene: dict) -> int:
    return sum(obj["role"] == "distractor" for obj in scene["objects"])


def frame_questions(scene: dict) -> list[tuple[str, str, str]]:
    """TGIF-FrameQA style triples answerable from any single frame (types object, color, number)."""
    a = scene["attributes"]
    qs = []
    if not a["new_color"]:  # after a colour change, neither question has one answer for every frame
        qs.append((f"what shape is the {a['color']} object", a["shape"], "object"))
        qs.append((f"what color is the {a['shape']}", a["color"], "color"))
    qs.append(("how many gray shapes are there", NUMBER_WORDS[_num_distractors(scene)], "number"))
    return qs


def action_options(attrs: dict, rng: np.random.Generator) -> tuple[list[str], int]:
    """TGIF-Action style: 5 motion phrases, one true; returns (options, answer index)."""
    truth = f"move {attrs['direction']} {attrs['speed']}"
    others = [f"move {d} {s}" for d in DIRECTIONS for s in SPEEDS if f"move {d} {s}" != truth]
    return _mix(truth, [others[i] for i in rng.permutation(len(others))[:4]], rng)


def transition_item(scene: dict, rng: np.random.Generator) -> tuple[str, list[str], int] | None:
    """TGIF-Transition style: what happens after the first event (or in the video); None if no event."""
    a = scene["attributes"]
    order = event_order(scene)
    if not order:
        return None
    if len(order) == 2:
        question = f"what happens after {event_phrase(order[0], a)}"
        truth = event_phrase(order[1], a)
        wrong = [event_phrase(order[0], a)]  # right event, wrong time: only the order tells them apart
    else:
        question = f"what happens after the {a['shape']} moves {a['direction']}"
        truth, wrong = event_phrase(order[0], a), []
    true_set = {event_phrase(e, a) for e in order}
    pool = _wrong_event_phrases(a, true_set)
    need = 4 - len(wrong)
    wrong += [pool[i] for i in rng.permutation(len(pool))[:need]]
    options, answer = _mix(truth, wrong, rng)
    return question, options, answer


def _wrong_event_phrases(a: dict, true_set: set[str]) -> list[str]:
    pool = [f"the {a['shape']} turns {c}" for c in PALETTE if c != a["color"]]
    pool += [f"a {c} {s} enters" for c in PALETTE for s in SHAPES if s != a["shape"]]
    pool += [f"the {c} {s} leaves" for c in PALETTE for s in SHAPES if s != a["shape"]]
    return sorted(p for p in set(pool) if p not in true_set)


def _mix(truth: str, wrong: list[str], rng: np.random.Generator) -> tuple[list[str], int]:
    answer = int(rng.integers(5))
    options = list(wrong[:4])
    options.insert(answer, truth)
    return options, answer
