"""The SK-VQA filters, word for word as the foundation issue defines them."""

import pytest
from hubsets.builders.skvqa import FILTERS, ir_terms

from hubsets.filters import contains_tokens, normalize_text, passed_filters, signature
from hubsets.schema import empty_record
from hubsets.testing.samples import SKVQA_CASES

IR, CAP = FILTERS


def record(context: str, answers: list[str]) -> dict:
    return empty_record(context=context, meta={"answers": answers})


@pytest.mark.parametrize("context", [
    "Imagine a city.", "The imagery is vivid.", "Photographic evidence.", "Photosynthesis in leaves.",
    "Imaging devices", "Repainting the fence", "no such words",
])
def test_ir_passes_derived_words(context):
    assert IR.passes(record(context, ["x"]))


@pytest.mark.parametrize("context", [
    "In the IMAGE, a bus.", "Pictures: a castle.", "The painting's frame.", "two photos", "A photograph.",
    "the picture", "images of cats", "oil paintings", "a Photo-essay", "PAINTING",
])
def test_ir_fails_whole_words(context):
    assert not IR.passes(record(context, ["x"]))


def test_ir_terms_lists_each_word_once():
    assert ir_terms("Image, image and PICTURES; a photo.") == ["image", "photo", "pictures"]


@pytest.mark.parametrize(("context", "answers", "expected"), [
    ("Built in 1889.", ["1889"], True),
    ("Café culture in Vienna.", ["CAFÉ culture"], True),
    ("The river is 6,650 km long.", ["6 650"], True),
    ("It is 300 metres tall.", ["3"], False),            # whole tokens only, no substring of a token
    ("It is 300 metres tall.", ["300 m"], False),
    ("Fuji erupted in 1707.", ["?!", "1707"], True),      # an empty-normalizing candidate fails, another passes
    ("Fuji erupted in 1707.", ["?!"], False),
    ("ﬁne print", ["fine"], True),                        # NFKC folds the ligature
    ("Der Fluß", ["fluß"], True),
    ("x", [""], False),
])
def test_cap(context, answers, expected):
    assert CAP.passes(record(context, answers)) is expected


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!! ") == "hello world"
    assert normalize_text("Ⅻ ２０２４") == "xii 2024"
    assert normalize_text("!!!") == ""
    assert contains_tokens("a b c", "B c") and not contains_tokens("ab c", "b c")


@pytest.mark.parametrize(("context", "answers", "ir", "cap"), SKVQA_CASES)
def test_sample_cases_are_what_they_claim(context, answers, ir, cap):
    r = record(context, answers)
    assert IR.passes(r) is ir
    assert CAP.passes(r) is cap
    sig = signature(FILTERS, r)
    assert passed_filters(sig, FILTERS) == {name for name, ok in (("ir", ir), ("cap", cap)) if ok}


def test_non_letter_digit_class_matches_unicode_categories_exactly():
    import re
    import sys
    import unicodedata

    from hubsets.filters import _NOT_LETTER_OR_DIGIT

    assert _NOT_LETTER_OR_DIGIT.pattern == r"[\W_]+"
    word = re.compile(r"[^\W_]")
    mismatches = [cp for cp in range(sys.maxunicode + 1)
                  if bool(word.match(chr(cp))) != (unicodedata.category(chr(cp))[0] in "LN")]
    assert mismatches == []
