"""Sentence templates: captions, event phrases and questions, all built from a scene's attributes.

Every word the templates can produce is in `TEMPLATE_WORDS`; the tests check each is one token of the
BERT uncased vocabulary, so the tokenizer never splits a colour or shape into pieces.
"""

from __future__ import annotations

import numpy as np

from .scene import DIRECTIONS, PALETTE, SHAPES, SIZES, SPEEDS, sample_attributes

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
    """TGIF-Transition style: what happens after the first event (or in the video); None if no event.

    The 4 wrong options are the true answers of other possible videos that the same question fits, so the
    true option is one more draw of the same distribution: no text statistic (how often a phrase is right,
    its event type, its words) tells it from them. Options drawn from a fixed pool made a text-only guess
    right 42% of the time: 42% of the true options were a colour change, 13% of the wrong ones.
    """
    asked = _transition_question(scene["attributes"], event_order(scene))
    if asked is None:
        return None
    question, truth = asked
    return (question, *_mix(truth, _transition_distractors(scene["attributes"], question, truth, rng), rng))


def _transition_question(a: dict, order: list[str]) -> tuple[str, str] | None:
    """(question, true answer) for a video with events `order`; the first of two events is named in the
    question, so it is never an option (a text model would only have to strike it)."""
    if not order:
        return None
    if len(order) == 2:
        return f"what happens after {event_phrase(order[0], a)}", event_phrase(order[1], a)
    return f"what happens after the {a['shape']} moves {a['direction']}", event_phrase(order[0], a)


# What each question form names about the video: (number of events, first event type if two) -> attributes.
_NAMED_BY_QUESTION = {
    (1, None): ("shape", "direction"),
    (2, "color_change"): ("shape", "new_color"),
    (2, "enter"): ("second_shape", "second_color"),
    (2, "leave"): ("second_shape", "second_color"),
}
_SHAPE_KEYS, _COLOR_KEYS = ("shape", "second_shape"), ("color", "new_color", "second_color")
_MAX_DRAWS = 10_000


def _question_form(order: list[str]) -> tuple[int, str | None]:
    return len(order), order[0] if len(order) == 2 else None


def _transition_distractors(a: dict, question: str, truth: str, rng: np.random.Generator) -> list[str]:
    """4 distinct wrong answers, each the answer for a video drawn from the generator given `question`."""
    form = _question_form(planned_event_order(a))
    wrong: list[str] = []
    for _ in range(_MAX_DRAWS):
        other = sample_attributes(rng)
        if _question_form(planned_event_order(other)) != form:  # a question of another wording
            continue
        for key in _NAMED_BY_QUESTION[form]:
            other = _swap(other, key, a[key])
        asked = _transition_question(other, planned_event_order(other))
        if asked[0] == question and asked[1] != truth and asked[1] not in wrong:
            wrong.append(asked[1])
            if len(wrong) == 4:
                return wrong
    raise RuntimeError(f"text: no 4 distinct wrong answers to {question!r} in {_MAX_DRAWS} draws")


def _swap(attrs: dict, key: str, value) -> dict:
    """`attrs` with attrs[key] and `value` exchanged wherever either appears among the shapes (or colours).

    sample_attributes treats every shape alike and every colour alike, so the swapped attributes are
    exactly as likely as the drawn ones: this draws from the generator conditioned on attrs[key] == value.
    """
    group = _SHAPE_KEYS if key in _SHAPE_KEYS else _COLOR_KEYS if key in _COLOR_KEYS else (key,)
    exchange = {attrs[key]: value, value: attrs[key]}
    return {**attrs, **{k: exchange.get(attrs[k], attrs[k]) for k in group}}


def _mix(truth: str, wrong: list[str], rng: np.random.Generator) -> tuple[list[str], int]:
    answer = int(rng.integers(5))
    options = list(wrong[:4])
    options.insert(answer, truth)
    return options, answer
