"""Tests for the benchmark loaders: each reads a tiny fixture written here in the benchmark's published layout
(Hugging Face parquet shards with embedded PNG bytes, or VLMEvalKit TSVs with base64 images)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks import BENCHMARKS, get_benchmark
from visionthink.images import load_image
from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()


def png(colour: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def hf_image(colour: str = "red", name: str = "x.png") -> dict:
    return {"bytes": png(colour), "path": name}


def write_parquet(path: Path, columns: dict, image_columns: tuple[str, ...] = ("image",)) -> Path:
    """A parquet shard as `datasets` publishes it (image columns as the Image() {bytes, path} struct)."""
    dataset = datasets.Dataset.from_dict(columns)
    for column in image_columns:
        dataset = dataset.cast_column(column, datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(path))
    return path


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """A VLMEvalKit TSV (tab-separated, header row, minimal quoting, base64 images)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def b64(colour: str = "red") -> str:
    return base64.b64encode(png(colour)).decode()


class FakeJudge(Judge):
    """Gives 1.0 to a prediction equal to the truth, 0.5 to any other non-empty one, fails on "BROKEN"."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[JudgeRequest] = []

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        self.requests.extend(requests)
        verdicts = []
        for r in requests:
            if r.prediction == "BROKEN":
                verdicts.append(Verdict(0.0, ok=False, error="garbage"))
            else:
                verdicts.append(Verdict(1.0 if r.prediction == r.truth else 0.5 if r.prediction else 0.0))
        return verdicts


def images_load(samples) -> None:
    for sample in samples:
        assert load_image(sample.image).mode == "RGB"


# ---------------------------------------------------------------- registry and errors


def test_registry_names_and_lookup():
    assert set(BENCHMARKS) == {"chartqa", "ocrbench", "docvqa", "mme", "mmvet", "realworldqa", "pope", "mathvista",
                               "mathverse", "synth", "synth-heldout", "synth-heldout-templates", "ladder",
                               "ladder-heldout", "ladder-heldout-templates", "ladder-validation"}
    assert get_benchmark("RealWorld-QA") is BENCHMARKS["realworldqa"]
    assert get_benchmark("synth_heldout") is get_benchmark("SynthHeldout") is BENCHMARKS["synth-heldout"]
    with pytest.raises(VisionThinkError, match="valid names: chartqa"):
        get_benchmark("nope")


@pytest.mark.parametrize("name", [n for n, b in BENCHMARKS.items() if not getattr(b, "generated", False)])
def test_missing_folder_names_the_layout(tmp_path, name):
    benchmark = BENCHMARKS[name]
    with pytest.raises(VisionThinkError, match="does not exist") as error:
        benchmark.load(tmp_path / "absent")
    assert "Expected layout" in str(error.value) and ".tsv" in str(error.value) and "parquet" in str(error.value)
    with pytest.raises(VisionThinkError, match="no benchmark folder"):
        benchmark.load(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisionThinkError, match="found no"):
        benchmark.load(tmp_path / "empty")


def test_missing_columns_and_bad_predictions(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet",
                  {"question": ["q"], "label": ["1"], "image": [hf_image()]})
    with pytest.raises(VisionThinkError, match=r"lacks column\(s\) \['type', 'answer'\]"):
        BENCHMARKS["chartqa"].load(tmp_path)
    samples = BENCHMARKS["synth"].load(None, limit=3)
    with pytest.raises(VisionThinkError, match="2 predictions for 3 samples"):
        BENCHMARKS["synth"].score(samples, ["a", "b"])


# ---------------------------------------------------------------- ChartQA


def test_chartqa_parquet(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "type": ["human_test", "human_test", "augmented_test", "augmented_test"],
        "question": ["How many food item is shown in the bar graph?",
                     "What is the difference in value between Lamb and Corn?",
                     "Is the sum value of Madagascar more then Fiji?", "What was the 4th most popular emotion?"],
        "answer": ["14", "0.57", "No", "Inspired"],
        "image": [hf_image(c) for c in ("red", "red", "blue", "green")],
    })
    benchmark = BENCHMARKS["chartqa"]
    samples = benchmark.load(tmp_path)
    assert [s.meta["split"] for s in samples] == ["human", "human", "augmented", "augmented"]
    assert samples[0].question.endswith("\nAnswer the question with a single word.")
    assert samples[1].answer == "0.57"
    images_load(samples)
    assert len(benchmark.load(tmp_path, limit=2)) == 2
    scores = benchmark.score(samples, ["14.5", "0.6", "no", "Yes."])
    # 14.5 within 5% of 14; 0.03/0.57 = 5.3% fails; "no" == "No"; "Yes." != "Inspired"
    assert scores.per_sample == [1.0, 0.0, 1.0, 0.0]
    assert scores.summary["score"] == 0.5 and scores.summary["relaxed"] == 0.5
    assert scores.summary["score/human"] == 0.5 and scores.summary["score/augmented"] == 0.5
    judge = FakeJudge()
    judged = benchmark.score(samples, ["14", "0.6", "BROKEN", None], judge=judge)
    # judge: 1.0, 0.5, failed -> relaxed 0.0, 0.0 (empty prediction)
    assert judged.per_sample == [1.0, 0.5, 0.0, 0.0]
    assert judged.summary["score"] == pytest.approx(0.375) and judged.summary["judge_failures"] == 1
    assert judge.requests[0].question == "How many food item is shown in the bar graph?"


def test_chartqa_tsv_keeps_answers_as_text(tmp_path):
    write_tsv(tmp_path / "ChartQA_TEST.tsv", [
        {"index": "0", "image": b64(), "question": "What is the value?", "answer": "1.20", "split": "test_human"},
        {"index": "1", "image": b64("blue"), "question": "Which is\tlargest?", "answer": "Fiji",
         "split": "test_augmented"},
    ])
    samples = BENCHMARKS["chartqa"].load(tmp_path)
    assert samples[0].answer == "1.20"  # not coerced to 1.2
    assert samples[1].meta["split"] == "augmented" and "\t" in samples[1].question
    images_load(samples)
    assert BENCHMARKS["chartqa"].load(tmp_path / "ChartQA_TEST.tsv", limit=1)[0].uid == "chartqa-0"


# ---------------------------------------------------------------- DocVQA


def test_docvqa_parquet_prefers_docvqa_config(tmp_path):
    question = "What is the \u2018actual\u2019 value per 1000, during the year 1975?"
    row = {"questionId": ["49153"], "question": [question],
           "question_types": [["figure/diagram"]], "image": [hf_image()], "docId": [14465],
           "ucsf_document_id": ["pybv0228"], "ucsf_document_page_no": ["81"], "answers": [["0.28"]],
           "data_split": ["val"]}
    write_parquet(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet", row)
    decoy = dict(row, questionId=["999"], answers=[["decoy"]])
    write_parquet(tmp_path / "InfographicVQA" / "validation-00000-of-00001.parquet", decoy)
    benchmark = BENCHMARKS["docvqa"]
    samples = benchmark.load(tmp_path)
    assert [s.uid for s in samples] == ["docvqa-49153"] and samples[0].answer == ["0.28"]
    assert samples[0].meta["question_types"] == ["figure/diagram"]
    images_load(samples)
    scores = benchmark.score(samples, ["0.29"])
    assert scores.summary["score"] == pytest.approx(0.75)  # 1 edit / 4 chars -> 1 - 0.25
    assert scores.summary["score/figure/diagram"] == pytest.approx(0.75)


def test_docvqa_tsv_repr_list_answers(tmp_path):
    write_tsv(tmp_path / "DocVQA_VAL.tsv", [
        {"index": "7", "image": b64(), "question": "Total?", "answer": "['0.28', '0.28%']"},
    ])
    samples = BENCHMARKS["docvqa"].load(tmp_path)
    assert samples[0].answer == ["0.28", "0.28%"]
    assert BENCHMARKS["docvqa"].score(samples, ["0.28%"]).summary["anls"] == 1.0


# ---------------------------------------------------------------- OCRBench


def test_ocrbench_parquet(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "dataset": ["IIIT5K", "HME100k"],
        "question": ["what is written in the image?",
                     "Please write out the expression of the formula in the image using LaTeX format."],
        "question_type": ["Regular Text Recognition", "Handwritten Mathematical Expression Recognition"],
        "answer": [["CENTRE"], ["x _ { 1 } = 0\n", "x _ 1 = 0\n"]],
        "image": [hf_image(), hf_image("blue")],
    })
    benchmark = BENCHMARKS["ocrbench"]
    samples = benchmark.load(tmp_path)
    assert samples[0].question == "what is written in the image?"
    assert samples[1].meta["hme"] and not samples[0].meta["hme"]
    images_load(samples)
    scores = benchmark.score(samples, ["The word is centre", "x_{1}=0"])
    assert scores.per_sample == [1.0, 1.0] and scores.summary["final_score"] == 2
    assert benchmark.score(samples, ["center", "X_{1}=0"]).summary["score"] == 0.0


def test_ocrbench_tsv(tmp_path):
    write_tsv(tmp_path / "OCRBench.tsv", [
        {"index": "0", "image": b64(), "question": "what is written in the image?", "answer": "['CENTRE']",
         "category": "Regular Text Recognition"},
    ])
    samples = BENCHMARKS["ocrbench"].load(tmp_path)
    assert samples[0].answer == ["CENTRE"] and samples[0].meta["category"] == "Regular Text Recognition"


# ---------------------------------------------------------------- MME


def test_mme_parquet_pairs(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "question_id": ["code_reasoning/0020.png", "code_reasoning/0020.png", "existence/1.jpg", "existence/1.jpg"],
        "image": [hf_image(), hf_image(), hf_image("blue"), hf_image("blue")],
        "question": ["Is a python code shown in the picture? Please answer yes or no.",
                     "Is a c++ code shown in the picture? Please answer yes or no.",
                     "Is there a dog? Please answer yes or no.", "Is there a cat? Please answer yes or no."],
        "answer": ["Yes", "No", "Yes", "No"],
        "category": ["code_reasoning", "code_reasoning", "existence", "existence"],
    })
    benchmark = BENCHMARKS["mme"]
    samples = benchmark.load(tmp_path)
    assert samples[0].question == ("Is a python code shown in the picture?"
                                   "\nAnswer the question using a single word or phrase.")
    assert samples[0].meta["image_id"] == samples[1].meta["image_id"] == "code_reasoning/0020.png"
    images_load(samples)
    scores = benchmark.score(samples, ["Yes", "No.", "yes", "Yes"])
    # code_reasoning: 2/2 right, 1/1 image -> 100 + 100 = 200; existence: 1/2 = 50, 0/1 images -> 50
    assert scores.summary["cognition"] == pytest.approx(200.0)
    assert scores.summary["perception"] == pytest.approx(50.0)
    assert scores.summary["total"] == pytest.approx(250.0)
    assert scores.summary["score"] == pytest.approx(250.0 / 400.0)  # 2 categories x 200
    assert scores.summary["score/existence"] == pytest.approx(0.25)
    assert scores.per_sample == [1.0, 1.0, 1.0, 0.0]


def test_mme_limit_never_splits_a_question_pair(tmp_path):
    ids = ["a.png", "a.png", "b.png", "b.png", "c.png", "c.png"]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "question_id": ids,
        "image": [hf_image() for _ in ids],
        "question": [f"Q{i}? Please answer yes or no." for i in range(len(ids))],
        "answer": ["Yes", "No"] * 3,
        "category": ["existence"] * len(ids),
    })
    benchmark = BENCHMARKS["mme"]
    for limit, images in [(1, ["a.png"]), (2, ["a.png"]), (3, ["a.png", "b.png"]), (4, ["a.png", "b.png"]),
                          (5, ["a.png", "b.png", "c.png"]), (50, ["a.png", "b.png", "c.png"])]:
        samples = benchmark.load(tmp_path, limit=limit)
        got = [s.meta["image_id"] for s in samples]
        assert got == [i for i in images for _ in range(2)], (limit, got)
    assert benchmark.load(tmp_path, limit=0) == []
    # acc+ stays defined: every image present has both of its questions
    scores = benchmark.score(benchmark.load(tmp_path, limit=3), ["Yes", "No", "Yes", "Yes"])
    assert scores.summary["points/existence"] == pytest.approx(75.0 + 50.0)  # acc 3/4, acc+ 1/2


def test_mme_limit_with_pairs_apart(tmp_path):
    write_tsv(tmp_path / "MME.tsv", [
        {"index": str(i), "image": b64(), "question": f"Q{i}? Please answer yes or no.", "answer": "Yes",
         "category": "color", "image_path": image}
        for i, image in enumerate(["a.png", "b.png", "a.png", "b.png", "c.png", "c.png"])
    ])
    samples = BENCHMARKS["mme"].load(tmp_path, limit=1)
    assert [s.meta["image_id"] for s in samples] == ["a.png", "a.png"]
    samples = BENCHMARKS["mme"].load(tmp_path, limit=3)
    assert [s.uid for s in samples] == ["mme-0", "mme-1", "mme-2", "mme-3"]  # rows in file order


def test_mme_tsv_image_references(tmp_path):
    write_tsv(tmp_path / "MME.tsv", [
        {"index": "0", "image": b64(), "question": "Is it red? Please answer yes or no.", "answer": "Yes",
         "category": "color"},
        {"index": "1", "image": "0", "question": "Is it blue? Please answer yes or no.", "answer": "No",
         "category": "color"},
    ])
    samples = BENCHMARKS["mme"].load(tmp_path)
    assert samples[1].image == samples[0].image  # "0" is the index of the row holding the image
    assert samples[0].meta["image_id"] == samples[1].meta["image_id"] == "0"
    scores = BENCHMARKS["mme"].score(samples, ["yes", "yes"])
    assert scores.summary["perception"] == pytest.approx(50.0)  # acc 1/2 = 50, acc+ 0/1 = 0


# ---------------------------------------------------------------- MM-Vet


def test_mmvet_parquet_needs_a_judge(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "question_id": ["v1_0", "v1_1"],
        "image": [hf_image(), hf_image("blue")],
        "question": ["What is x in the equation?", "What is d in the last equation?"],
        "answer": ["-1<AND>-5", "1.25<OR>=1.25<OR>5/4"],
        "image_source": ["a.png", "b.png"],
        "capability": ["ocr,math", "ocr,math"],
    })
    benchmark = BENCHMARKS["mmvet"]
    samples = benchmark.load(tmp_path)
    assert samples[0].meta["capabilities"] == ["ocr", "math"] and samples[0].uid == "mmvet-v1_0"
    images_load(samples)
    with pytest.raises(VisionThinkError, match="judge"):
        benchmark.score(samples, ["-1, -5", "1.25"])
    judge = FakeJudge()
    scores = benchmark.score(samples, ["-1<AND>-5", "BROKEN"], judge=judge)
    assert scores.per_sample == [1.0, 0.0]  # a failed verdict scores 0
    assert scores.summary["score"] == 0.5 and scores.summary["score/ocr"] == 0.5
    assert scores.summary["judge_failures"] == 1
    assert judge.requests[1] == JudgeRequest("What is d in the last equation?", "1.25<OR>=1.25<OR>5/4", "BROKEN")


def test_eval_refuses_mmvet_without_a_judge_before_running(tmp_path):
    from visionthink.eval.runner import EvalConfig, run_eval

    write_parquet(tmp_path / "data" / "mmvet" / "data" / "test-00000-of-00001.parquet", {
        "question_id": ["v1_0"], "image": [hf_image()], "question": ["What is x in the equation?"],
        "answer": ["-1<AND>-5"], "image_source": ["a.png"], "capability": ["ocr,math"],
    })

    class CountingEngine:
        def __init__(self):
            self.calls = 0

        def run(self, requests, mode, progress=None):
            self.calls += 1
            raise AssertionError("the model ran before the missing judge was noticed")

    engine = CountingEngine()
    out = tmp_path / "report"
    config = EvalConfig(model=None, benches=["synth", "MM-Vet"], modes=["full"], out=out,
                        data_root=tmp_path / "data", limit=2, progress=False)
    with pytest.raises(VisionThinkError, match=r"mmvet.*--judge"):
        run_eval(config, engine=engine, log=lambda message: None)
    assert engine.calls == 0 and not out.exists()  # nothing loaded, run or written
    # the refusal comes before the data is looked for, too
    missing = EvalConfig(model=None, benches=["mmvet"], modes=["full"], out=out, data_root=tmp_path / "absent",
                         progress=False)
    with pytest.raises(VisionThinkError, match="--judge"):
        run_eval(missing, engine=engine, log=lambda message: None)
    assert BENCHMARKS["mmvet"].needs_judge and not BENCHMARKS["pope"].needs_judge


# ---------------------------------------------------------------- RealWorldQA

RWQA_QUESTION = ("In which direction is the front wheel of the car on the right side facing?\nA. Left\nB. Straight\n"
                 "C. Right\nPlease answer directly with only the letter of the correct option and nothing else.")


def test_realworldqa_parquet(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", {
        "image": [hf_image(name="0.webp"), hf_image("blue", "1.webp")],
        "question": [RWQA_QUESTION, "How many cars are there?\nPlease answer directly with a single word or number."],
        "answer": ["C", "2"],
        "image_path": ["0.webp", "1.webp"],
    })
    benchmark = BENCHMARKS["realworldqa"]
    samples = benchmark.load(tmp_path)
    assert samples[0].question == RWQA_QUESTION  # verbatim
    assert samples[0].meta["options"] == {"A": "Left", "B": "Straight", "C": "Right"}
    images_load(samples)
    assert benchmark.score(samples, ["C", "2."]).summary["score"] == 1.0
    # lmms-eval 75571cf reads letters only and maps no number words
    assert benchmark.score(samples, ["Right", "two"]).per_sample == [0.0, 0.0]
    assert benchmark.score(samples, ["C or A", "3"]).per_sample == [1.0, 0.0]  # start beats end
    legacy = type(benchmark)()
    legacy.rule = "lmms-eval-legacy"  # before lmms-eval #1274
    assert legacy.score(samples, ["Right", "two"]).per_sample == [1.0, 1.0]


def test_realworldqa_tsv(tmp_path):
    write_tsv(tmp_path / "RealWorldQA.tsv", [
        {"index": "0", "image": b64(), "question": "In which direction is the front wheel facing?", "answer": "C",
         "A": "Left", "B": "Straight", "C": "Right", "D": ""},
    ])
    samples = BENCHMARKS["realworldqa"].load(tmp_path)
    assert samples[0].meta["options"] == {"A": "Left", "B": "Straight", "C": "Right"}
    assert "\nC. Right\n" in samples[0].question
    assert BENCHMARKS["realworldqa"].score(samples, ["(C)"]).summary["score"] == 1.0


# ---------------------------------------------------------------- POPE


def pope_rows(category: str, start: int) -> dict:
    return {
        "id": [str(start), str(start + 1)],
        "question_id": [str(start + 1), str(start + 2)],
        "question": ["Is there a snowboard in the image?", "Is there a car in the image?"],
        "answer": ["yes", "no"],
        "image_source": ["COCO_val2014_000000310196", "COCO_val2014_000000310196"],
        "image": [hf_image(), hf_image()],
        "category": [category, category],
    }


def test_pope_default_config(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows("adversarial", 0))
    benchmark = BENCHMARKS["pope"]
    samples = benchmark.load(tmp_path)
    assert samples[0].question.endswith("\nAnswer the question using a single word or phrase.")
    assert samples[0].meta["image_source"] == "COCO_val2014_000000310196"
    images_load(samples)
    scores = benchmark.score(samples, ["Yes, there is.", "Yes"])
    # TP 1, FP 1, FN 0: precision 1/2, recall 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3; accuracy 1/2; yes-ratio 2/2
    assert scores.summary["score"] == pytest.approx(2 / 3) and scores.summary["f1"] == pytest.approx(2 / 3)
    assert scores.summary["accuracy"] == 0.5 and scores.summary["yes_ratio"] == 1.0
    assert scores.summary["score/adversarial"] == pytest.approx(2 / 3)
    # an empty answer reads "yes" in the official rule: TP 1 (""), FP 1 -> the same figures
    assert benchmark.score(samples, ["", "Yes"]).summary["f1"] == pytest.approx(2 / 3)
    lmms = type(benchmark)()
    lmms.rule = "lmms-eval"
    # lmms-eval: "Yes, there is." is neither yes nor no: TP 0, FP 1 ("Yes" on a no), no FN -> all 0;
    # its yes-ratio is the ground truth's (1 of 2)
    judged = lmms.score(samples, ["Yes, there is.", "Yes"]).summary
    assert (judged["precision"], judged["recall"], judged["f1"], judged["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5)
    judged = lmms.score(samples, ["yes", "maybe"]).summary
    assert (judged["precision"], judged["recall"], judged["accuracy"], judged["yes_ratio"]) == (1.0, 1.0, 0.5, 0.5)


def test_pope_full_config_splits(tmp_path):
    for i, split in enumerate(("adversarial", "popular", "random")):
        write_parquet(tmp_path / "Full" / f"{split}-00000-of-00001.parquet", pope_rows(split, 3000 * i))
    samples = BENCHMARKS["pope"].load(tmp_path)
    assert [s.meta["categories"][0] for s in samples] == ["adversarial"] * 2 + ["popular"] * 2 + ["random"] * 2
    assert len({s.uid for s in samples}) == 6
    assert len(BENCHMARKS["pope"].load(tmp_path, limit=3)) == 3


def test_pope_tsv(tmp_path):
    write_tsv(tmp_path / "POPE.tsv", [
        {"index": "0", "image": b64(), "question": "Is there a dog?", "answer": "Yes", "category": "popular,random"},
    ])
    samples = BENCHMARKS["pope"].load(tmp_path)
    assert samples[0].answer == "yes" and samples[0].meta["categories"] == ["popular", "random"]
    scores = BENCHMARKS["pope"].score(samples, ["No"])
    assert scores.summary["accuracy"] == 0.0 and set(scores.summary) >= {"score/popular", "score/random"}


# ---------------------------------------------------------------- MathVista


def test_mathvista_parquet(tmp_path):
    meta = {"category": "math-targeted-vqa", "context": "scientific figure", "grade": "college",
            "language": "english", "skills": ["scientific reasoning"], "source": "SciBench", "split": "testmini",
            "task": "textbook question answering"}
    write_parquet(tmp_path / "data" / "testmini-00000-of-00001-abc.parquet", {
        "pid": ["1", "2", "5"],
        "question": ["What is the spring constant?", "what is the total volume of the measuring cup?",
                     "Find $m\\angle H$"],
        "image": ["images/1.jpg", "images/2.jpg", "images/5.jpg"],
        "decoded_image": [hf_image(), hf_image("blue"), hf_image("green")],
        "choices": [None, None, ["97", "102", "107", "122"]],
        "unit": [None, "g", None],
        "precision": [1.0, None, None],
        "answer": ["1.2", "1000", "97"],
        "question_type": ["free_form", "free_form", "multi_choice"],
        "answer_type": ["float", "integer", "text"],
        "metadata": [meta, dict(meta, task="figure question answering"), dict(meta, task="geometry problem solving")],
        "query": ["Hint: ...", "Hint: ...", "Hint: ..."],
    }, image_columns=("decoded_image",))
    benchmark = BENCHMARKS["mathvista"]
    samples = benchmark.load(tmp_path)
    assert samples[0].meta["precision"] == 1  # cast from 1.0
    assert samples[1].question == ("what is the total volume of the measuring cup? (Unit: g)\n"
                                   "Answer the question using a single integer number.")
    assert samples[2].question == ("Find $m\\angle H$\nA. 97\nB. 102\nC. 107\nD. 122\n"
                                   "Answer with the option's letter from the given choices directly.")
    images_load(samples)
    scores = benchmark.score(samples, ["1.23", "1000 g", "B"])
    assert scores.per_sample == [1.0, 1.0, 0.0]  # round(1.23, 1) = 1.2; 1000; B -> "102" != "97"
    assert scores.summary["score"] == pytest.approx(2 / 3)
    assert scores.summary["score/geometry problem solving"] == 0.0
    judged = benchmark.score(samples, ["1.23", "1000 g", "B"], judge=FakeJudge())
    assert judged.per_sample == [1.0, 1.0, 0.5] and judged.summary["rules"] == pytest.approx(2 / 3)


def test_mathvista_tsv(tmp_path):
    write_tsv(tmp_path / "MathVista_MINI.tsv", [
        {"index": "5", "image": b64(), "question": "Hint: ...\nQuestion: Find $m\\angle H$\nChoices:\n(A) 97\n(B) 102",
         "answer": "97", "answer_option": "A", "choices": "['97', '102']", "question_type": "multi_choice",
         "answer_type": "text", "task": "geometry problem solving", "skills": "['algebraic reasoning']"},
    ])
    samples = BENCHMARKS["mathvista"].load(tmp_path)
    assert samples[0].meta["choices"] == ["97", "102"] and samples[0].question.startswith("Hint:")
    assert BENCHMARKS["mathvista"].score(samples, ["(A)"]).summary["score"] == 1.0


# ---------------------------------------------------------------- MathVerse

CED_QUESTION = ("As shown in the figure, in triangle ABC, it is known that angle A = 80.0, angle B = 60.0, point D is "
                "on AB and point E is on AC, DE parallel BC, then the size of angle CED is ()\nChoices:\nA:40\u00b0\n"
                "B:60\u00b0\nC:120\u00b0\nD:140\u00b0")


def test_mathverse_parquet(tmp_path):
    meta = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
    columns = {
        "sample_index": ["1", "2"],
        "problem_index": ["1", "2"],
        "problem_version": ["Text Dominant", "Text Lite"],
        "question": [CED_QUESTION, "Find the area of the square with side 2\\sqrt{3}."],
        "image": [hf_image(), None],
        "answer": ["D", "12"],
        "question_type": ["multi-choice", "free-form"],
        "metadata": [meta, meta],
        "query_wo": ["Please directly answer the question and provide the correct option letter, e.g., A, B, C, D.\n"
                     "Question: " + CED_QUESTION, "Please directly answer the question.\nQuestion: area?"],
        "query_cot": ["cot", "cot"],
        "question_for_eval": [CED_QUESTION, "Find the area of the square with side 2\\sqrt{3}."],
    }
    write_parquet(tmp_path / "testmini" / "testmini-00000-of-00001.parquet", columns)
    write_parquet(tmp_path / "testmini_text_only" / "testmini-00000-of-00001.parquet",
                  dict(columns, sample_index=["900", "901"]))
    benchmark = BENCHMARKS["mathverse"]
    samples = benchmark.load(tmp_path)
    assert [s.uid for s in samples] == ["mathverse-1", "mathverse-2"]
    assert samples[0].question.startswith("Please directly answer") and samples[0].meta["options"]["D"] == "140\u00b0"
    assert samples[1].meta["text_only"] and load_image(samples[1].image).size == (56, 56)
    images_load(samples)
    scores = benchmark.score(samples, ["D", "The area is (2\\sqrt{3})^2 = 12"])
    assert scores.per_sample == [1.0, 1.0]
    assert scores.summary["score/Text Dominant"] == 1.0 and scores.summary["score/Plane Geometry"] == 1.0
    assert benchmark.score(samples, ["C", "11"]).summary["score"] == 0.0


def test_mathverse_tsv(tmp_path):
    write_tsv(tmp_path / "MathVerse_MINI.tsv", [
        {"index": "1", "image": b64(), "question": "Question: " + CED_QUESTION, "answer": "D",
         "question_for_eval": CED_QUESTION, "problem_version": "Text Dominant",
         "metadata": "{'split': 'testmini', 'subject': 'Plane Geometry'}", "query_cot": "cot"},
    ])
    samples = BENCHMARKS["mathverse"].load(tmp_path)
    assert samples[0].meta["question_type"] == "multi-choice" and samples[0].meta["subject"] == "Plane Geometry"
    assert BENCHMARKS["mathverse"].score(samples, ["140\u00b0"]).summary["score"] == 1.0


# ---------------------------------------------------------------- synth


def test_synth_builtin_and_saved(tmp_path):
    from visionthink.data.export import write_synth_dataset

    benchmark = BENCHMARKS["synth"]
    builtin = benchmark.load(None, limit=6)
    assert len(builtin) == 6 and [s.meta["family"] for s in builtin[:3]] == ["coarse", "fine_small", "fine_large"]
    assert builtin[1].meta["needs_high_res"] and not builtin[0].meta["needs_high_res"]
    assert [s.uid for s in benchmark.load("builtin", limit=2)] == [s.uid for s in builtin[:2]]
    write_synth_dataset(tmp_path / "synth", n=3, seed=0, splits=["test"])
    saved = benchmark.load(tmp_path / "synth")
    assert [s.uid for s in saved] == [s.uid for s in builtin[:3]]
    assert [s.answer for s in saved] == [s.answer for s in builtin[:3]]
    assert saved[1].meta == builtin[1].meta
    images_load(saved)
    assert len(benchmark.load(tmp_path / "synth", limit=2)) == 2
    predictions = [s.answer.upper() + "." for s in builtin[:3]] + ["wrong"] * 3
    scores = benchmark.score(builtin, predictions)
    # normalised exact match: 3 of 6 right, one right per family
    assert scores.summary["score"] == 0.5
    assert scores.summary["score/coarse"] == scores.summary["score/fine_small"] == 0.5
    with pytest.raises(VisionThinkError, match="visionthink data synth"):
        benchmark.load(tmp_path / "absent")


def test_synth_heldout_same_images_and_answers_other_wordings(tmp_path):
    from visionthink.data import synth

    plain, heldout = BENCHMARKS["synth"].load(None, limit=12), BENCHMARKS["synth-heldout"].load("builtin", limit=12)
    assert [s.uid for s in heldout] == [s.uid for s in plain]
    assert [s.answer for s in heldout] == [s.answer for s in plain]
    assert [s.meta for s in heldout] == [s.meta for s in plain]
    assert all(h.image.tobytes() == p.image.tobytes() for h, p in zip(heldout, plain, strict=True))
    assert [s.question for s in heldout] == [i.question for i in synth.split_items("test", 12, wordings="heldout")]
    assert [s.question for s in plain] == [i.question for i in synth.split_items("test", 12, wordings="train")]
    assert any(h.question != p.question for h, p in zip(heldout, plain, strict=True))
    assert len(BENCHMARKS["synth-heldout"].load(None)) == 600
    with pytest.raises(VisionThinkError, match="reads no folder"):
        BENCHMARKS["synth-heldout"].load(tmp_path)


# ---------------------------------------------------------------- image cells


def test_image_cells_fall_back_or_name_the_row(tmp_path):
    """MathVista reads `image` (a path under the folder) where `decoded_image` is empty; a row without an
    image is refused naming its key column, or its position when the benchmark has none."""
    (tmp_path / "mv" / "images").mkdir(parents=True)
    (tmp_path / "mv" / "images" / "2.png").write_bytes(png("blue"))
    write_parquet(tmp_path / "mv" / "data" / "testmini-00000-of-00001.parquet", {
        "pid": ["1", "2"], "question": ["a?", "b?"], "image": ["images/1.png", "images/2.png"],
        "decoded_image": [hf_image(), None], "choices": [None, None], "answer": ["1", "2"],
        "question_type": ["free_form"] * 2, "answer_type": ["integer"] * 2,
    }, image_columns=("decoded_image",))
    samples = BENCHMARKS["mathvista"].load(tmp_path / "mv")
    assert isinstance(samples[0].image, bytes) and samples[1].image == tmp_path / "mv" / "images" / "2.png"
    write_parquet(tmp_path / "chartqa" / "data" / "test-00000-of-00001.parquet", {
        "type": ["human_test"] * 2, "question": ["q", "q"], "answer": ["1", "2"], "image": [hf_image(), None]})
    with pytest.raises(VisionThinkError, match="chartqa: row 1: no image"):
        BENCHMARKS["chartqa"].load(tmp_path / "chartqa")
    write_parquet(tmp_path / "mmvet" / "data" / "test-00000-of-00001.parquet", {
        "question_id": ["v1_0"], "image": [None], "question": ["q"], "answer": ["a"], "capability": ["ocr"]})
    with pytest.raises(VisionThinkError, match="mmvet: question_id v1_0: no image"):
        BENCHMARKS["mmvet"].load(tmp_path / "mmvet")
