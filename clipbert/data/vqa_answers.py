"""VQA 2.0 answers: the official evaluation's normalization, per-answer accuracy and the answer vocabulary.

The rules follow the VQA API's evaluation (vqaEval.py, GT-Vision-Lab/VQA) as documented there; the code is
written here. Training targets and evaluation must normalize alike, or a right prediction scores 0.
"""

from __future__ import annotations

import re
from collections import Counter

# Deleted or turned into a space (see _strip_punctuation); each mark is decided on its own, so order is moot.
# The apostrophe is not here: the contraction table maps answers onto their apostrophe forms.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'

# A comma between digits ("1,000") makes the official rule delete every punctuation mark of the answer
# rather than space it, so "1,000" becomes "1000".
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period is a decimal point only when a digit follows it ("2.5", ".5"); any other period is dropped. The
# official pattern meant to also keep periods after digits, but its look-behind is misspelled, so "5." loses
# its period there too; matching it keeps our scores equal to the official ones.
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (32) where `re.sub` takes its count: only the first 32 such periods go.
_PERIODS_REMOVED = 32

NUMBER_WORDS = {
    "none": "0",  # official: "none" is a count answer, so it matches "0"
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, as the evaluation applies it: a lowercased word that is a key is replaced.
# Its keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match lowercased words, and "let's" and
# "she's" map to themselves, so those entries are left out; "lets" and "im" stay as they are. Its oddities
# stay in, because the server scores with them: "somebody'd" becomes "somebodyd", and "twas" becomes "'twas".
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    """The official punctuation step, including its whole-answer decision.

    Per mark, the official rule looks at the whole answer: if that mark touches a space anywhere
    ("red, white") or the answer holds a digit-comma-digit ("1,000"), every occurrence of the mark is
    deleted; otherwise each becomes a space ("t-shirt" -> "t shirt"), so words glued by it stay apart.
    """
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark not in text:
            continue
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or has_number_comma else " ")
    return _NON_DECIMAL_PERIOD.sub("", out, count=_PERIODS_REMOVED)


def normalize_answer(text: str) -> str:
    """An answer in the form the official VQA evaluation compares, following its steps in order.

    1. Lowercase; newlines and tabs become spaces; strip.
    2. Punctuation: ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` are deleted or turned into spaces
       (see `_strip_punctuation`); a period is kept only before a digit ("2.5"), so "yes." -> "yes".
    3. Per word: number words "zero".."ten" (and "none") become digits, the articles a/an/the are dropped,
       and apostrophe-less contractions take their apostrophe ("dont" -> "don't").
    4. Words are joined by single spaces.

    The contraction table is the official one as it acts (see CONTRACTIONS): "im" stays "im", as there.
    """
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    words = []
    for word in _strip_punctuation(text).split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def answer_scores(answers: list[str], as_evaluated: bool = False) -> dict[str, float]:
    """The official VQA accuracy of each distinct normalized answer against the given human answers.

    as_evaluated: score as the official evaluation does, quirk included: when every human gave the same
    string (after stripping), it normalizes nothing, neither the humans' answers nor the prediction, so
    only that raw string scores (1.0 from four humans on, as any answer; leaving one out still applies).
    Ten "none"s then score the vocabulary's "0" as 0 on the server; local evaluation must say so too.
    Training targets keep the normalized form (as_evaluated=False).

    The official score of a prediction is the mean, over the n ways of leaving one human out, of
    min(1, matches among the other n-1 / 3). For an answer given by c of n humans that is
    (c * min(1, (c-1)/3) + (n-c) * min(1, c/3)) / n: 0.3, 0.6, 0.9 and 1.0 for c = 1, 2, 3, 4+ of 10.
    With one human answer (n == 1) there is no one left to match, so that answer scores 1.0.
    Answers that normalize to "" count in n but are not candidates.
    """
    n = len(answers)
    raw = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if as_evaluated and n > 1 and len(set(raw)) == 1:
        # Unnormalized, but still left out one at a time: two or three agreeing humans score 1/3 or 2/3
        # there, as in training (this returned 1.0 for any number of them)
        counts = Counter(raw)
    else:
        counts = Counter(normalize_answer(a) for a in answers)
    counts.pop("", None)
    if n == 1:
        return {answer: 1.0 for answer in counts}
    # In thirds, so the sum is an exact integer and the one division rounds once (0.3 is the nearest float).
    return {
        answer: (c * min(3, c - 1) + (n - c) * min(3, c)) / (3 * n) for answer, c in sorted(counts.items())
    }


def _majority_answer(answers: list[str]) -> str | None:
    """The most common normalized answer; ties go to the alphabetically first, so annotator order is moot."""
    counts = Counter(normalize_answer(a) for a in answers)
    counts.pop("", None)
    if not counts:
        return None
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def build_ans2label(examples_answers: list[list[str]], min_count: int = 9) -> dict[str, int]:
    """The answer vocabulary {answer: label}: majority answers of at least `min_count` questions.

    Each question contributes its majority normalized answer once (give [multiple_choice_answer] per question
    for the official one). VQA v2's usual 3,129 answers are min_count 9 over train+val. Labels run 0..K-1 by
    descending count, then alphabetically, so the vocabulary does not depend on question order.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    majorities = Counter(_majority_answer(answers) for answers in examples_answers)
    majorities.pop(None, None)
    kept = sorted((item for item in majorities.items() if item[1] >= min_count), key=lambda i: (-i[1], i[0]))
    if not kept:
        raise ValueError(
            f"no answer is the majority answer of min_count={min_count} or more questions "
            f"({len(examples_answers)} questions); lower min_count"
        )
    return {answer: label for label, (answer, _) in enumerate(kept)}
