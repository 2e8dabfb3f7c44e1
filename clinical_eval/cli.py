"""``radlvlm eval``: build error-check sets, produce baselines and predictions, run validation and reader studies.

Wired into the main app with ``app.add_typer(eval_app, name="eval")``. Every radlvlm error ends as one line on
stderr with exit code 2; counts in/scored/dropped are always printed.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded, stderr
from radlvlm.errors import EvaluationInputError

if TYPE_CHECKING:  # for annotations only: the commands import the evaluation modules when they run
    from radlvlm.clinical_eval.judges import Judge

eval_app = typer.Typer(
    name="eval",
    help="Clinical evaluation: error-check sets, baselines, validation studies, reader studies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: v for k, v in row.items() if k != "_row"}, ensure_ascii=False) + "\n")


def _parse_fractions(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise fail(f"--split-fractions: expected name=fraction pairs, got {part!r}") from None
    return out


@eval_app.command("make-errorcheck")
def make_errorcheck(
    reports: Annotated[list[Path], typer.Argument(help="Report files (JSONL/Parquet; IU-Xray manifest layout).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL of error-check rows.")],
    seed: Annotated[int, typer.Option(help="Seed for assignment and injection.")] = 0,
    error_fraction: Annotated[float, typer.Option(help="Share of each split that carries an error.")] = 0.5,
    split_fractions: Annotated[
        str | None,
        typer.Option(
            help="Assign splits by uid hash instead of the rows' 'split', e.g. train=0.8,validation=0.1,test=0.1"
        ),
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Error category to inject (repeatable; default all).")
    ] = None,
) -> None:
    """Build a balanced, seeded error-check set: each study once, clean or with one injected error."""
    from radlvlm.clinical_eval.predictions import load_rows
    from radlvlm.tasks.errorcheck import build_errorcheck_set

    def job() -> dict[str, Any]:
        rows = [r for path in reports for r in load_rows(path)]
        built, summary = build_errorcheck_set(
            rows,
            seed=seed,
            error_fraction=error_fraction,
            split_fractions=_parse_fractions(split_fractions),
            categories=category,
        )
        _write_jsonl(out, built)
        return summary

    summary = run_guarded(job)
    typer.echo(json.dumps(summary, indent=2))


@eval_app.command()
def predict(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Studies to predict (JSONL/Parquet): id, image (path), indication; for checks 'text' or 'report'."
        ),
    ],
    model: Annotated[
        Path,
        typer.Option(exists=True, file_okay=False, help="torch: a radlvlm model directory; vllm: an HF Llava export."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions JSONL for `radlvlm eval run`.")],
    task: Annotated[str, typer.Option(help="draft, check-simple or check-complex.")] = "draft",
    backend: Annotated[
        str, typer.Option(help="torch, or vllm: vLLM's batch engine (A100/H100; the vllm extra's environment).")
    ] = "torch",
    adapter: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="A MoLE (torch) or peft LoRA adapter.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder relative image paths start from (default: the manifest's).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Predict only rows of this split (their 'split' field).")] = None,
    limit: Annotated[int | None, typer.Option(help="Predict only the first N rows.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget of a draft.")] = 256,
    batch_size: Annotated[int, typer.Option(help="torch: requests run together.")] = 8,
    chunk_size: Annotated[int, typer.Option(help="Studies decoded and handed to the engine at a time.")] = 256,
    device: Annotated[str, typer.Option(help="torch: cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="torch: float32, bfloat16 or float16 (V100).")] = "float32",
    prefix_caching: Annotated[bool, typer.Option(help="vllm: reuse the KV cache of shared prompt prefixes.")] = True,
    ngram_speculative_tokens: Annotated[
        int, typer.Option(help="vllm: n-gram speculative decoding, draft tokens per step (0: off).")
    ] = 0,
    gpu_memory_utilization: Annotated[float, typer.Option(help="vllm: share of GPU memory it takes.")] = 0.9,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[
        bool, typer.Option(help="Keep the studies OUT already holds (a killed run) and predict the others.")
    ] = True,
) -> None:
    """Run a model over a manifest of studies and write a predictions file (offline validation runs).

    Each study takes the path it takes at every door (de-identification, guardrails, engine, audit); the engine,
    the project key and the audit trail come from the RADLVLM_* settings, with these options on top. Predictions
    are written chunk by chunk, so a killed run resumes where it stopped. Under ``torchrun`` or ``accelerate
    launch`` each process predicts its share of the studies (by a hash of the study id) into OUT.part-R-of-N.jsonl,
    and when every process is done the first merges the parts into OUT, in manifest order
    (``radlvlm eval merge-predictions OUT`` does it by hand)."""
    from radlvlm.pipeline import build_runtime
    from radlvlm.pipeline.batch import PredictionsFile, Shard, merge_parts, read_manifest
    from radlvlm.settings import load_settings

    def job() -> dict[str, Any]:
        shard = Shard.from_environment()
        rows = read_manifest(manifest, task=task, image_root=image_root, split=split, limit=limit)
        target = shard.part(out)
        store = PredictionsFile(target, positions=shard.world > 1)
        if not resume:
            store.discard()
        mine = shard.rows(rows)
        todo = store.remaining(mine)
        settings = load_settings(
            model_dir=model,
            adapter_dir=adapter,
            backend=backend,
            device=_device_of_this_process(device),
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            max_batch_size=batch_size,
            max_queue=max(batch_size, chunk_size),
            vllm_prefix_caching=prefix_caching,
            vllm_ngram_speculative_tokens=ngram_speculative_tokens,
            vllm_gpu_memory_utilization=gpu_memory_utilization,
        )
        runtime = build_runtime(settings)
        try:
            store.check_model(runtime.model_id)
            _, summary = _predict_with_progress(
                runtime,
                todo,
                task,
                chunk_size=chunk_size,
                show_progress=progress and sys.stderr.isatty(),
                on_chunk=store.append,
            )
        finally:
            runtime.close()  # the engine is stopped even when a study fails
        summary = {
            **summary,
            "studies": len(store.done),
            "predicted_now": summary["studies"],
            "resumed_with": len(mine) - len(todo),
            "refused": dict(store.refused),
            "backend": backend,
            "out": str(target),
        }
        if shard.world > 1:
            summary["shard"] = {"rank": shard.rank, "of": shard.world, "studies_in_manifest": len(rows)}
            _wait_for_every_process()
            if shard.rank == 0:
                summary["merged"] = merge_parts(out)
        return summary

    _print_prediction_summary(run_guarded(job))


@eval_app.command("merge-predictions")
def merge_predictions(
    out: Annotated[Path, typer.Argument(help="The predictions file a split run was given (its parts are beside it).")],
) -> None:
    """Join the parts of a split ``eval predict`` run (OUT.part-R-of-N.jsonl) into OUT, in manifest order."""
    from radlvlm.pipeline.batch import merge_parts

    typer.echo(json.dumps(run_guarded(lambda: merge_parts(out)), indent=2))


def _device_of_this_process(device: str) -> str:
    """``cuda`` under torchrun / accelerate launch is this process's GPU (LOCAL_RANK), not every process's first."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None and local_rank.isdigit():
        return f"cuda:{local_rank}"
    return device


def _wait_for_every_process() -> None:
    """A barrier over the processes torchrun / accelerate launch started (gloo: CPU or GPU alike), so the first
    merges only complete parts. The wait is long: one process may hold more of the slow studies."""
    import torch.distributed as dist

    if not os.environ.get("MASTER_ADDR"):
        return  # WORLD_SIZE set by hand, without a launcher: merge later with `radlvlm eval merge-predictions`
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _predict_with_progress(
    runtime: Any,
    rows: list[Any],
    task: str,
    *,
    chunk_size: int,
    show_progress: bool,
    on_chunk: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The predictions and their summary, with a progress bar on stderr counting studies done."""
    from radlvlm.cli_support import progress_bar
    from radlvlm.pipeline.batch import predict as run_predictions

    with progress_bar("predicting", show_progress) as bar:
        bar_task = bar.add_task("predicting", total=len(rows))
        return run_predictions(
            runtime,
            rows,
            task,
            chunk_size=chunk_size,
            on_progress=lambda done, _total: bar.update(bar_task, completed=done),
            on_chunk=on_chunk,
        )


def _print_prediction_summary(summary: dict[str, Any]) -> None:
    """One line for a person on stderr (with any guardrail refusals), the full summary as JSON on stdout."""
    refused = f", {len(summary['refused'])} refused by the guardrails" if summary["refused"] else ""
    resumed = f" ({summary['resumed_with']} kept from before)" if summary.get("resumed_with") else ""
    stderr.print(
        f"studies predicted: {summary['studies']}{resumed}{refused} in {summary['seconds']} s", highlight=False
    )
    typer.echo(json.dumps(summary, indent=2))


@eval_app.command()
def baselines(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the baselines' predictions files.")],
    train: Annotated[
        Path | None, typer.Option(help="Training reports (report task): the pool to retrieve from.")
    ] = None,
    target: Annotated[Path | None, typer.Option(help="Reports to predict (report task), e.g. the test split.")] = None,
    errorcheck: Annotated[
        Path | None, typer.Option(help="An error-check set (from make-errorcheck) for the error-check baselines.")
    ] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option(help="An .npz with 'ids' and 'embeddings' (one image embedding per study): adds image retrieval."),
    ] = None,
    train_split: Annotated[str, typer.Option(help="Error-check split the majority class is taken from.")] = "train",
    target_split: Annotated[str, typer.Option(help="Error-check split to predict.")] = "test",
) -> None:
    """Write baseline predictions: most-common-normal and nearest-neighbour (indication TF-IDF) reports; for an
    error-check set, majority class and the findings-vs-impression consistency checker."""
    from radlvlm.clinical_eval import baselines as b
    from radlvlm.clinical_eval.predictions import load_rows

    if (train is None) != (target is None):
        raise fail("give both --train and --target for the report baselines")
    if embeddings is not None and train is None:
        raise fail("--embeddings needs --train and --target")
    if train is None and errorcheck is None:
        raise fail("nothing to do: give --train/--target and/or --errorcheck")

    def job() -> dict[str, Any]:
        written: dict[str, Any] = {}
        if train is not None and target is not None:
            train_rows, target_rows = load_rows(train), load_rows(target)
            path = out / "most_common_normal.jsonl"
            _write_jsonl(path, b.most_common_normal_predictions(train_rows, target_rows))
            written[str(path)] = {"rows": len(target_rows)}
            rows, counts = b.nearest_neighbour_by_indication(train_rows, target_rows)
            path = out / "nearest_neighbour_indication.jsonl"
            _write_jsonl(path, rows)
            written[str(path)] = {"rows": len(rows), **counts}
            if embeddings is not None:
                ids, vectors = _load_embeddings(embeddings)
                path = out / "nearest_neighbour_image.jsonl"
                _write_jsonl(path, b.nearest_neighbour_image_predictions(train_rows, target_rows, ids, vectors))
                written[str(path)] = {"rows": len(target_rows)}
        if errorcheck is not None:
            rows = load_rows(errorcheck)
            fit = [r for r in rows if r.get("split") == train_split]
            goal = [r for r in rows if r.get("split") == target_split]
            if not goal:
                raise EvaluationInputError(f"{errorcheck.name}: no row in split {target_split!r}")
            references = out / f"errorcheck_references_{target_split}.jsonl"
            _write_jsonl(references, goal)
            written[str(references)] = {"rows": len(goal)}
            for name, produced in (
                ("errorcheck_majority_class.jsonl", b.majority_class_predictions(fit, goal)),
                ("errorcheck_consistency_checker.jsonl", b.consistency_predictions(goal)),
            ):
                _write_jsonl(out / name, produced)
                written[str(out / name)] = {"rows": len(produced)}
        return written

    typer.echo(json.dumps(run_guarded(job), indent=2))


def _load_embeddings(path: Path) -> tuple[list[str], Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return [str(i) for i in data["ids"]], data["embeddings"]
    except (OSError, KeyError, ValueError) as e:
        raise EvaluationInputError(f"{path}: expected an .npz with arrays 'ids' and 'embeddings'") from e


@eval_app.command()
def run(
    predictions: Annotated[Path, typer.Option("--predictions", "-p", help="Predictions file (JSONL/Parquet).")],
    references: Annotated[Path, typer.Option("--references", "-r", help="References file (JSONL/Parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json, per_study.jsonl, report.html.")],
    task: Annotated[
        str | None, typer.Option(help="report or errorcheck (default: detected from the references).")
    ] = None,
    compare: Annotated[
        Path | None, typer.Option(help="A second predictions file, compared pairwise on the same studies.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name for the report stamp.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name for the report stamp.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_missing: Annotated[
        bool, typer.Option(help="Drop (and count) ids on one side only and empty references instead of failing.")
    ] = False,
    split: Annotated[
        str | None, typer.Option(help="Score only reference rows of this split (their 'split' field).")
    ] = None,
    structured_judge: Annotated[bool, typer.Option(help="Score with the offline structured judge.")] = True,
    llm_judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (e.g. http://host:8000/v1) for the LLM judge.")
    ] = None,
    llm_judge_model: Annotated[str | None, typer.Option(help="Model name served at --llm-judge-url.")] = None,
    llm_judge_cache: Annotated[Path | None, typer.Option(help="Cache folder for LLM judge answers.")] = None,
    llm_judge_api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the endpoint's API key, if it needs one.")
    ] = "RADLVLM_JUDGE_API_KEY",
    llm_judge_attempts: Annotated[int, typer.Option(help="Tries per pair before the LLM judge gives up.")] = 3,
    llm_judge_timeout: Annotated[float, typer.Option(help="Seconds per LLM judge request.")] = 60.0,
    bertscore_encoder: Annotated[
        Path | None, typer.Option(help="Local Hugging Face encoder folder: adds BERTScore (report task).")
    ] = None,
    bertscore_layer: Annotated[int | None, typer.Option(help="Encoder layer for BERTScore (default last).")] = None,
) -> None:
    """Run a validation study: metrics with bootstrap CIs to metrics.json and a self-contained report.html."""
    from radlvlm.clinical_eval.runner import run_validation_study

    if (llm_judge_url is None) != (llm_judge_model is None):
        raise fail("give both --llm-judge-url and --llm-judge-model for the LLM judge")

    def job() -> dict[str, Any]:
        return run_validation_study(
            predictions,
            references,
            out,
            task=task,
            judges=_judges(
                structured_judge,
                llm_judge_url,
                llm_judge_model,
                api_key_env=llm_judge_api_key_env,
                cache_dir=llm_judge_cache,
                max_attempts=llm_judge_attempts,
                timeout=llm_judge_timeout,
            ),
            compare=compare,
            model=model,
            dataset=dataset,
            n_boot=n_boot,
            seed=seed,
            allow_missing=allow_missing,
            bertscore_encoder=bertscore_encoder,
            bertscore_layer=bertscore_layer,
            split=split,
        )

    _print_study_result(run_guarded(job))


def _judges(
    structured_judge: bool,
    llm_judge_url: str | None,
    llm_judge_model: str | None,
    *,
    api_key_env: str,
    cache_dir: Path | None,
    max_attempts: int,
    timeout: float,
) -> list[Judge]:
    """The judges asked for: the offline structured judge, and the LLM judge when an endpoint is given."""
    from radlvlm.clinical_eval.judges import LLMJudge, StructuredJudge

    judges: list[Judge] = [StructuredJudge()] if structured_judge else []
    if llm_judge_url is not None and llm_judge_model is not None:
        judges.append(
            LLMJudge(
                llm_judge_url,
                llm_judge_model,
                api_key=os.environ.get(api_key_env),  # from the environment: never on the command line
                cache_dir=cache_dir,
                max_attempts=max_attempts,
                timeout=timeout,
            )
        )
    return judges


def _print_study_result(result: dict[str, Any]) -> None:
    """The counts in/scored/dropped on stderr (always shown), the headline numbers as JSON on stdout."""
    from radlvlm.clinical_eval.runner import headline

    c = result["counts"]
    stderr.print(
        f"predictions in: {c['predictions_in']}, references in: {c['references_in']}, scored: {c['scored']}, "
        f"dropped: {c['dropped']}",
        highlight=False,
    )
    typer.echo(json.dumps(headline(result), indent=2))


@eval_app.command("reader-packets")
def reader_packets(
    references: Annotated[Path, typer.Option("--references", "-r", help="References file.")],
    system: Annotated[
        list[str], typer.Option("--system", help="NAME=PREDICTIONS_FILE for each system to grade (repeatable).")
    ],
    reader: Annotated[list[str], typer.Option("--reader", help="Reader name (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for packets, grade sheets and the key.")],
    n_studies: Annotated[int | None, typer.Option(help="Studies to sample (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling, case codes and order.")] = 0,
) -> None:
    """Write blinded, randomized reader packets (HTML + CSV grade sheet per reader) and the coordinator key."""
    from radlvlm.clinical_eval.predictions import load_rows
    from radlvlm.clinical_eval.reader import make_reader_packets

    pairs = {}
    for spec in system:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise fail(f"--system expects NAME=PREDICTIONS_FILE, got {spec!r}")
        pairs[name] = Path(path)

    def job() -> dict[str, Any]:
        systems = {name: load_rows(path) for name, path in pairs.items()}
        return make_reader_packets(load_rows(references), systems, reader, out, n_studies=n_studies, seed=seed)

    typer.echo(json.dumps(run_guarded(job), indent=2))


@eval_app.command("reader-import")
def reader_import(
    packets: Annotated[Path, typer.Option("--packets", help="The folder reader-packets wrote.")],
    grades: Annotated[list[Path], typer.Argument(help="Filled-in grades_<reader>.csv files.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the agreement JSON here.")] = None,
    structured_judge: Annotated[bool, typer.Option(help="Compare the structured judge with the readers.")] = True,
) -> None:
    """Import readers' grades; print inter-reader (Cohen, Fleiss kappa) and judge-reader (Kendall tau) agreement."""
    from radlvlm.clinical_eval.judges import StructuredJudge
    from radlvlm.clinical_eval.reader import import_grades, reader_agreement

    def job() -> dict[str, Any]:
        loaded = import_grades(packets, grades)
        return reader_agreement(packets, loaded, [StructuredJudge()] if structured_judge else [])

    result = run_guarded(job)
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    typer.echo(text)


@eval_app.command("iu-agreement")
def iu_agreement(
    reports: Annotated[list[Path], typer.Argument(help="IU-Xray manifest files (with mesh tags).")],
    uncertain_as_positive: Annotated[bool, typer.Option(help="Count the labeler's uncertain as positive.")] = False,
) -> None:
    """Agreement of the rule-based CheXpert labeler with IU-Xray's MeSH tags (per observation, micro, macro)."""
    from radlvlm.clinical_eval.iu_tags import iu_tag_agreement
    from radlvlm.clinical_eval.predictions import load_rows

    def job() -> dict[str, Any]:
        rows = [r for path in reports for r in load_rows(path)]
        return iu_tag_agreement(rows, uncertain_as_positive=uncertain_as_positive)

    typer.echo(json.dumps(run_guarded(job), indent=2))


@eval_app.command()
def label(
    reports: Annotated[Path, typer.Argument(help="Predictions, references or IU-Xray manifest file (JSONL/Parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL: id and the 14 CheXpert labels per row.")],
    field: Annotated[
        str | None,
        typer.Option(help="Text field to label (default: 'prediction', else 'reference', else findings + impression)."),
    ] = None,
) -> None:
    """Label reports with the rule-based CheXpert-14 labeler (positive / negative / uncertain / blank)."""
    from radlvlm.clinical_eval.predictions import load_rows, report_reference
    from radlvlm.reports.labeler import label_report, summary_counts

    def job() -> dict[str, Any]:
        rows = load_rows(reports)
        labelled, bad = [], []
        for row in rows:
            if field is not None:
                text = row.get(field)
            elif "prediction" in row:
                text = row["prediction"]
            else:
                text = report_reference(row)
            if not isinstance(text, str):
                bad.append(f"row {row['_row']}")
                continue
            labelled.append((row.get("id", row.get("uid", row["_row"])), label_report(text)))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise EvaluationInputError(f"{reports.name}: {len(bad)} row(s) without text in the chosen field: {shown}")
        _write_jsonl(out, [{"id": i, "labels": {k: v.value for k, v in r.labels.items()}} for i, r in labelled])
        return {"rows": len(labelled), "counts": summary_counts(r for _, r in labelled)}

    typer.echo(json.dumps(run_guarded(job), indent=2))
