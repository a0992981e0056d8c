"""Tests for `visionthink.eval.metrics` against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from visionthink.eval import metrics as m

OPTIONS = {"A": "Left", "B": "Straight", "C": "Right"}


# ---------------------------------------------------------------- Levenshtein


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("kitten", "sitting", 3),  # k->s, e->i, insert g
        ("flaw", "lawn", 2),  # delete f, insert n
        ("", "abc", 3),  # three insertions
        ("0.28", "12", 3),  # delete 0, . -> 1, keep 2, delete 8
        ("same", "same", 0),
    ],
)
def test_levenshtein(a, b, expected):
    assert m.levenshtein(a, b) == expected
    assert m.levenshtein(b, a) == expected


# ---------------------------------------------------------------- ChartQA relaxed accuracy


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("14.5", "14", True),  # |14.5-14|/14 = 0.5/14 = 0.0357 <= 0.05
        ("14.8", "14", False),  # 0.8/14 = 0.0571 > 0.05
        ("13.3", "14", True),  # 0.7/14 = 0.05 exactly: <= 0.05 holds
        ("0.59", "0.57", True),  # 0.02/0.57 = 0.0351
        ("0.6", "0.57", False),  # 0.03/0.57 = 0.0526
        ("47%", "47", False),  # 47% -> 0.47; |0.47-47|/47 = 0.99
        ("47%", "0.47", True),  # 0.47 vs 0.47
        ("Yes.", "Yes", False),  # no punctuation stripping: "yes." != "yes"
        ("yes", "Yes", True),  # case-insensitive string path
        ("0.0", "0", False),  # target 0 is falsy: string path, "0.0" != "0"
        ("0", "0", True),
        (" Inspired ", "Inspired", True),  # the prediction is stripped (VLMEvalKit)
        (None, "14", False),
    ],
)
def test_relaxed_correctness(prediction, target, expected):
    assert m.relaxed_correctness(prediction, target) is expected


def test_relaxed_accuracy_takes_any_target():
    assert m.relaxed_accuracy("15", ["3", "14.5"]) == 1.0  # |15-14.5|/14.5 = 0.0345
    assert m.relaxed_accuracy("15", ["3", "20"]) == 0.0  # 12/3 = 4 and 5/20 = 0.25


# ---------------------------------------------------------------- ANLS


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("0.28", ["0.28"], 1.0),
        ("0.29", ["0.28"], 0.75),  # 1 substitution / max(4, 4) = 0.25 -> 1 - 0.25
        ("0.2", ["0.28"], 0.75),  # 1 deletion / max(4, 3) = 0.25
        ("12", ["0.28"], 0.0),  # distance 3 / 4 = 0.75 -> 0.25 < 0.5 -> 0
        (" new york ", ["New  York"], 1.0),  # both normalise to "new york"
        ("  ab c  ", ["ab"], 0.75),  # "ab c" vs "ab": 2 / max(raw 2, raw 8) = 0.25 (raw lengths)
        ("Lamp", ["Lamb", "corn"], 0.75),  # min(1/4, 4/4) = 0.25
        ("Corn", ["Lamb", "corn"], 1.0),
        ("abc", ["abcdef"], 0.5),  # 3 / 6 = 0.5 -> 0.5 is not below the threshold
        (None, ["0.28"], 0.0),  # 4 / 4 = 1 -> 0
    ],
)
def test_anls(prediction, answers, expected):
    assert m.anls(prediction, answers) == pytest.approx(expected)


def test_anls_mean_over_questions():
    scores = [m.anls("0.29", ["0.28"]), m.anls("12", ["0.28"]), m.anls("0.28", "0.28")]
    assert sum(scores) / 3 == pytest.approx((0.75 + 0.0 + 1.0) / 3)  # = 0.5833


# ---------------------------------------------------------------- OCRBench


def test_ocrbench_general_rule_is_case_insensitive_substring():
    assert m.ocrbench_match("The text says centre.", "CENTRE")  # "centre" in "the text says centre."
    assert not m.ocrbench_match("center", "CENTRE")
    assert m.ocrbench_match("line one\nline two", ["one line", "one line two"])  # newline -> space


def test_ocrbench_hme_rule_drops_spaces_and_keeps_case():
    answers = ["x _ { 1 } = 0\n", "x _ 1 = 0\n"]
    assert m.ocrbench_match("x_{1}=0", answers, hme=True)  # "x_{1}=0" after removing spaces
    assert not m.ocrbench_match("X_{1}=0", answers, hme=True)  # case kept
    assert not m.ocrbench_match("x_{1}=0", answers, hme=False)  # "x _ { 1 } = 0" is not a substring


def test_ocrbench_total_out_of_1000():
    hits = [m.ocrbench_match(p, a) for p, a in [("CENTRE", "centre"), ("no", "yes"), ("a 12 b", "12")]]
    assert sum(hits) == 2  # the paper's score is this count on the 1,000 items


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("y", "yes"),
        ("n", "no"),
        ("x", "other"),
        ("Yes, there is a dog", "yes"),  # first four chars "yes," contain "yes"
        ("Not sure", "no"),  # first four chars "not " contain "no"
        ("I think yes", "other"),  # "i th" holds neither
        ("", "other"),
        (None, "other"),
    ],
)
def test_mme_yes_no(prediction, label):
    assert m.mme_yes_no(prediction) == label


def test_mme_scores_acc_plus_and_sums():
    categories = ["existence"] * 4 + ["code_reasoning"] * 4
    images = ["a", "a", "b", "b", "c", "c", "d", "d"]
    correct = [True, True, True, False, True, True, False, False]
    result = m.mme_scores(categories, images, correct)
    # existence: acc = 3/4 = 75%, acc+ = 1/2 images (a) = 50% -> 125
    assert result["points/existence"] == pytest.approx(125.0)
    # code_reasoning: acc = 2/4 = 50%, acc+ = 1/2 (c) = 50% -> 100
    assert result["points/code_reasoning"] == pytest.approx(100.0)
    assert result["perception"] == pytest.approx(125.0)
    assert result["cognition"] == pytest.approx(100.0)
    assert result["total"] == pytest.approx(225.0)
    assert result["max_total"] == pytest.approx(400.0)  # 2 categories x 200


def test_mme_category_kinds():
    assert m.mme_category_kind("OCR") == "perception"
    assert m.mme_category_kind("text_translation") == "cognition"
    assert m.mme_category_kind("made_up") is None
    assert len(m.MME_PERCEPTION) * 200 == 2000 and len(m.MME_COGNITION) * 200 == 800


# ---------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No, there is not.", "no"),
        ("There is no snowboard", "no"),  # the word "no"
        ("no.", "no"),
        ("Not really", "yes"),  # official quirk: "Not" (capital) is not one of No/not/no
        ("", "yes"),  # official quirk: no negation word in an empty answer
        (None, None),
    ],
)
def test_pope_official_rule(prediction, label):
    assert m.pope_yes_no(prediction) == label


def test_pope_lmms_eval_rule():
    assert m.pope_yes_no(" Yes ", rule="lmms-eval") == "yes"
    assert m.pope_yes_no("Yes.", rule="lmms-eval") is None  # lmms-eval counts "Yes." wrong
    with pytest.raises(ValueError):
        m.pope_yes_no("yes", rule="other")


def test_pope_metrics_hand_computed():
    truths = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    labels = ["yes", "yes", "no", "yes", "no", "no", None, "no"]
    # TP = 2 (0, 1), FP = 1 (3), FN = 2 (2, and 6 whose None counts as negative), TN = 3 (4, 5, 7)
    result = m.pope_metrics(truths, labels)
    assert result["accuracy"] == pytest.approx(5 / 8)  # 0, 1, 4, 5, 7 right = 0.625
    assert result["precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert result["recall"] == pytest.approx(0.5)  # 2 / (2 + 2)
    assert result["f1"] == pytest.approx(4 / 7)  # 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 0.5714
    assert result["yes_ratio"] == pytest.approx(3 / 8)  # predictions 0, 1, 3 are "yes"


def test_pope_metrics_degenerate():
    result = m.pope_metrics(["no", "no"], ["no", "no"])
    assert result == {"accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


# ---------------------------------------------------------------- multiple choice


def test_parse_options_forms():
    rwqa = "In which direction is the front wheel facing?\nA. Left\nB. Straight\nC. Right\nPlease answer directly."
    assert m.parse_options(rwqa) == OPTIONS
    assert m.parse_options("Choices:\nA:40°\nB:60°") == {"A": "40°", "B": "60°"}
    assert m.parse_options("Question: Find x\nChoices:\n(A) 97\n(B) 102") == {"A": "97", "B": "102"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("C", "C"),
        ("(B)", "B"),
        ("B.", "B"),
        ("right", "C"),  # equals an option's text
        ("The answer is B.", "B"),
        ("Answer: (A)", "A"),
        ("B. Straight", "B"),
        ("I would pick C here", "C"),  # the only stand-alone valid letter
        ("A car is turning right", "C"),  # article "A" ignored; "right" is the only option named
        ("Left or right", None),  # two options named
        ("E", None),  # not an option
        ("", None),
    ],
)
def test_extract_choice(prediction, expected):
    assert m.extract_choice(prediction, OPTIONS) == expected


def test_extract_choice_with_letters_only():
    assert m.extract_choice("the correct option is D", "ABCD") == "D"
    assert m.extract_choice("Right", "ABCD") is None


def test_realworldqa_match():
    assert m.realworldqa_match("C", "C", OPTIONS)
    assert m.realworldqa_match("Right", "C", OPTIONS, rule="lmms-eval-legacy")  # option text -> letter there only
    assert not m.realworldqa_match("A", "C", OPTIONS)
    assert m.realworldqa_match("two", "2", rule="lmms-eval-legacy")  # number words count as digits there only
    assert m.realworldqa_match("Downhill.", "Downhill")  # rstrip('.') and lower-case
    assert not m.realworldqa_match("2 cars", "2")


# ---------------------------------------------------------------- numbers and maths


def test_numbers_in():
    assert m.numbers_in("from 1,234.5 to -7 and .5") == [1234.5, -7.0, 0.5]
    assert m.numbers_in("no digits") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3/4", 0.75),
        ("2\\sqrt{3}", 2 * math.sqrt(3)),  # 3.4641
        ("√12", math.sqrt(12)),  # the same value, 3.4641
        ("\\frac{1}{2}", 0.5),
        ("\\frac{\\pi}{2}", math.pi / 2),
        ("1,000", 1000.0),
        ("x = 5", 5.0),
        ("2^{10}", 1024.0),
        ("60°", 60.0),
        ("abc", None),
        ("10^{1000}", None),  # exponent refused (over 64)
        ("__import__('os')", None),  # never evaluated
        ("1/0", None),
    ],
)
def test_math_value(text, value):
    result = m.math_value(text)
    if value is None:
        assert result is None
    else:
        assert result == pytest.approx(value)


def test_final_answer_text():
    assert m.final_answer_text("<answer>\\boxed{5}</answer>") == "5"
    assert m.final_answer_text("x=3, so the answer is 6.") == "6"
    assert m.final_answer_text("plain") == "plain"


# ---------------------------------------------------------------- MathVista

CUP = ["97", "102", "107", "122"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("A", True),  # letter A -> choice "97"
        ("97", True),  # equals a choice
        ("(A) 97", True),
        ("The answer is 97 degrees", True),  # only choice named in the answer text
        ("102", False),
        ("98", True),  # official quirk: closest choice; lev("98","97") = 1 < 3 for the others
        (None, False),
    ],
)
def test_mathvista_multi_choice(response, expected):
    assert m.mathvista_match(response, "97", "multi_choice", "text", CUP) is expected


def test_mathvista_integer_float_list():
    assert m.mathvista_match("1000 g", "1000", "free_form", "integer")
    assert m.mathvista_match("1000.7", "1000", "free_form", "integer")  # str(int(float(x))) truncates -> "1000"
    assert not m.mathvista_match("999", "1000", "free_form", "integer")
    # precision is stored as 1.0 in HF data; round(1.23, 1) = 1.2 -> "1.2"
    assert m.mathvista_match("1.23", "1.2", "free_form", "float", precision=1.0)
    assert not m.mathvista_match("1.26", "1.2", "free_form", "float", precision=1.0)  # round -> 1.3
    # no precision: the answer's own decimals (2) are used; round(1.254, 2) = 1.25
    assert m.mathvista_match("1.254", "1.25", "free_form", "float")
    assert m.mathvista_match("[2007, 2008]", "[2007, 2008]", "free_form", "list")
    assert m.mathvista_match("The years are [2007,2008]", "[2007, 2008]", "free_form", "list")
    assert not m.mathvista_match("[2007]", "[2007, 2008]", "free_form", "list")


def test_mathvista_normalize():
    assert m.mathvista_normalize("(B)", "multi_choice", "text", CUP) == "102"
    assert m.mathvista_normalize("7.96", "free_form", "integer") == "7"  # int(7.96) = 7
    assert m.mathvista_normalize("3.14159", "free_form", "float", precision=2.0) == "3.14"
    assert m.mathvista_normalize("abc", "free_form", "float", precision=1) is None


# ---------------------------------------------------------------- MathVerse

CED = {"A": "40°", "B": "60°", "C": "120°", "D": "140°"}


def test_mathverse_multi_choice():
    assert m.mathverse_match("D", "D", "multi-choice", CED)
    assert m.mathverse_match("140°", "D", "multi-choice", CED)  # the option's text
    assert m.mathverse_match("angle CED = 140°, so the answer is D", "D", "multi-choice", CED)
    assert not m.mathverse_match("The answer is C", "D", "multi-choice", CED)
    assert not m.mathverse_match(None, "D", "multi-choice", CED)


def test_mathverse_free_form():
    assert m.mathverse_match("√12", "2\\sqrt{3}", "free-form")  # sqrt(12) = 2 sqrt(3) = 3.4641
    assert m.mathverse_match("$2 \\sqrt{3}$", "2\\sqrt{3}", "free-form")  # same text once normalised
    assert m.mathverse_match("60 degrees", "60°", "free-form")  # last number 60 == 60
    assert m.mathverse_match("5/4", "1.25", "free-form")  # 5/4 = 1.25
    assert m.mathverse_match("x=3, so the answer is 6", "6", "free-form")
    assert not m.mathverse_match("61", "60°", "free-form")


# ---------------------------------------------------------------- published rules (issue 15, items 12-15)


def test_anls_length_is_taken_on_the_upper_cased_strings():
    # lmms-eval divides by max(len(answer.upper()), len(pred.upper())); "ß".upper() is "SS"
    # distance("ss", "ßß") = 2; raw lengths give 2 / 2 -> 0, upper-cased ones 2 / 4 -> 0.5
    assert m.anls("ßß", ["ss"]) == pytest.approx(0.5)
    # "ﬁ" (one ligature character) upper-cases to "FI": distance("fix", "ﬁx") = 2, 1 - 2 / 3 -> 0 below 0.5
    assert m.anls("ﬁxed", ["fixed"]) == pytest.approx(1 - 2 / 5)  # max(len("FIXED"), len("FIXED")) = 5


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("", "yes"),  # official: text before "." is "", no negation word -> yes
        ("   ", "yes"),
        (".", "yes"),
        (None, None),  # no answer at all stays unanswered
    ],
)
def test_pope_official_rule_on_empty_predictions(prediction, label):
    assert m.pope_yes_no(prediction) == label


def test_pope_lmms_eval_aggregation():
    truths = ["yes", "yes", "yes", "no", "no", "no"]
    labels = ["yes", None, "no", "yes", None, "no"]  # None: neither "yes" nor "no" exactly
    official = m.pope_metrics(truths, labels)
    lmms = m.pope_metrics(truths, labels, rule="lmms-eval")
    # lmms-eval: TP = 1, FP = 1 (truth no, pred yes), FN = 1 (only truth yes AND pred exactly "no")
    assert lmms["precision"] == pytest.approx(1 / 2)
    assert lmms["recall"] == pytest.approx(1 / 2)  # 1 / (1 + 1): the unanswered yes is not a false negative
    assert lmms["f1"] == pytest.approx(1 / 2)
    assert lmms["yes_ratio"] == pytest.approx(3 / 6)  # lmms-eval's yes-ratio is the ground truth's
    assert lmms["accuracy"] == pytest.approx(2 / 6)
    # official: a missing label is a negative prediction -> FN = 2, recall 1/3; yes_ratio of predictions 2/6
    assert official["recall"] == pytest.approx(1 / 3) and official["yes_ratio"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        m.pope_metrics(truths, labels, rule="other")


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("A dog", "A"),  # starts with a stand-alone letter: the start rule wins (not read as an article)
        ("A or B", "A"),  # start (priority 10) beats end (9)
        ("C", "C"),
        ("(B)", "B"),
        ("The answer is (C).", "C"),  # "(C)" and the phrase both point at C
        ("B. Straight", "B"),
        ("I think it is D", "D"),  # ends with a stand-alone letter
        ("Right", ""),  # no letter anywhere: option texts are not mapped
        ("c", ""),  # a lower-case letter is not a choice
        ("", ""),
        (None, ""),
    ],
)
def test_lmms_eval_mcq_letter(prediction, letter):
    assert m.lmms_mcq_letter(prediction, "ABCD") == letter


def test_realworldqa_follows_lmms_eval_75571cf():
    assert m.realworldqa_match("A dog", "A", OPTIONS)
    assert not m.realworldqa_match("A or B", "B", OPTIONS) and m.realworldqa_match("A or B", "A", OPTIONS)
    assert m.realworldqa_match("C", "C", OPTIONS) and not m.realworldqa_match("Right", "C", OPTIONS)
    assert m.realworldqa_match("Downhill.", "Downhill") and not m.realworldqa_match("two", "2")
    assert not m.realworldqa_match(None, "A", OPTIONS)


def test_realworldqa_legacy_rule():
    # lmms-eval before #1274: number words, option text -> letter, exact match without case and punctuation
    legacy = "lmms-eval-legacy"
    assert m.realworldqa_match("Right.", "C", OPTIONS, rule=legacy)  # the option's text names C
    assert m.realworldqa_match("(C)", "C", OPTIONS, rule=legacy)  # punctuation dropped -> "C"
    assert not m.realworldqa_match("A dog", "A", OPTIONS, rule=legacy)
    assert not m.realworldqa_match("A or B", "B", OPTIONS, rule=legacy)
    assert m.realworldqa_match("two", "2", rule=legacy)
    with pytest.raises(ValueError):
        m.realworldqa_match("A", "A", rule="vlmevalkit")


def test_mathvista_official_comparison_is_on_strings_after_rounding():
    # str(round(1.2, 2)) = "1.2" != "1.20": wrong in the official scorer, so wrong here
    assert not m.mathvista_match("1.20", "1.20", "free_form", "float", precision=2)
    assert m.mathvista_match("1.2", "1.2", "free_form", "float", precision=1)
    assert m.mathvista_match("1.23", "1.2", "free_form", "float", precision=1.0)  # round(1.23, 1) -> "1.2"
    assert not m.mathvista_match("[2007,2008]", "[2007, 2009]", "free_form", "list")


def test_mathvista_lower_case_letter_in_brackets():
    # official: re.findall(r"\((\w)\)") then .upper(): "(b)" -> B -> "102"
    assert m.mathvista_normalize("(b)", "multi_choice", "text", CUP) == "102"
    assert m.mathvista_match("(b)", "102", "multi_choice", "text", CUP)
    assert m.mathvista_match("I pick (d) here", "122", "multi_choice", "text", CUP)


def test_mathvista_python_number_before_any_fallback():
    # official extraction tries int(response) / float(response) first: "1_000" is 1000 there
    assert m.mathvista_match("1_000", "1000", "free_form", "integer")
    assert m.mathvista_match("1_000.5", "1000.5", "free_form", "float", precision=1)
    assert m.mathvista_match("about 1_000 g", "1000", "free_form", "integer")  # one number, not 1 then 000
    assert m.numbers_in("1_000 and 2_500_000") == [1000.0, 2500000.0]


def test_mathvista_empty_multi_choice_answer_as_official():
    # official: "" is normalised to the choice nearest to "" by edit distance, i.e. the shortest one
    assert m.mathvista_normalize("", "multi_choice", "text", CUP) == "97"
    assert m.mathvista_match("", "97", "multi_choice", "text", CUP)
    assert not m.mathvista_match("", "102", "multi_choice", "text", CUP)
    assert not m.mathvista_match(None, "97", "multi_choice", "text", CUP)  # no answer at all stays wrong
    assert not m.mathvista_match("", "5", "free_form", "integer")


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("2 and 3", "3", False),  # two candidate answers: a hedge, not 3
        ("The answer is 2 or 3.", "3", False),
        ("x = 2, y = 3", "3", False),
        ("3", "3", True),
        ("The answer is 3.", "3", True),
        ("AB = 5 and AC = 12.\nSo BC = 13 cm", "13", True),  # no anchor: the last line holds one number
        ("BC is 13 because AB = 5 and AC = 12", "13", False),  # no anchor, three numbers in the last line
        ("We find 13.\nChecking: 5^2 + 12^2 = 169", "13", False),  # the last line is the check, not 13
    ],
)
def test_mathverse_needs_one_unambiguous_answer(prediction, truth, expected):
    assert m.mathverse_match(prediction, truth, "free-form") is expected
