"""Mutation testing of the core modules with cosmic-ray: `make mutants` (docs/mutation.md).

For each module, a copy of the repository is made under build/mutants/MODULE (the working tree
is never touched), cosmic-ray lists every mutant of maskbatch/MODULE.py, a fixed random sample of
them is kept (--sample; 0 = all), and each kept mutant runs the module's own fast test selection
(TESTS below) with pytest -x. A mutant is killed when a test fails, survives when all pass.
Results: build/mutants/MODULE.json and a table on stdout; survivors' diffs in
build/mutants/MODULE.survivors.txt.

    python tests/mutation/mutants.py --modules evaluate,files --sample 40
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "mutants"

# the fast tests that exercise each module (seconds each, no Dask cluster of processes)
TESTS: dict[str, list[str]] = {
    "evaluate": ["tests/test_evaluate.py", "tests/test_cli_commands.py::test_evaluate_command"],
    "output": ["tests/test_contract.py", "tests/test_evaluate.py::test_csv_column_quirk_round_trip"],
    "api": ["tests/test_contract.py"],
    "pipeline": ["tests/test_contract.py"],
    "classify": ["tests/test_train.py::test_bundled_model_classifies_real_crops_without_tensorflow",
                 "tests/test_train.py::test_checksum_mismatch_is_refused",
                 "tests/test_predict.py::test_crops_do_not_keep_their_photo_alive",
                 "tests/test_contract.py"],
    "detect": ["tests/test_detect.py", "tests/test_quality.py"],
    "images": ["tests/test_images.py", "tests/test_contract.py"],
    "files": ["tests/test_contract.py", "tests/test_evaluate.py::test_bad_inputs_raise_one_line_errors"],
}


def copy_tree(dest: Path) -> None:
    """The repository's files (tracked and untracked, not ignored) copied to `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def annotation_spans(source: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every type annotation: mutating one changes nothing at run time
    (the modules use `from __future__ import annotations`), so such mutants are not run."""
    spans = []
    for node in ast.walk(ast.parse(source.read_text())):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            notes.append(node.returns)
        elif isinstance(node, ast.arg):
            notes.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        spans.extend(((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset))
                     for n in notes if n is not None)
    return spans


def run_module(module: str, sample: int, seed: int, python: str) -> dict:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    work = BUILD / module
    copy_tree(work)
    selected = [t for t in TESTS[module] if (REPO / t.split("::")[0]).is_file()]
    if not selected:
        raise SystemExit(f"{module}: none of its tests exist: {TESTS[module]}")
    tests = " ".join(selected)
    command = f"{python} -m pytest -x -q -p no:cacheprovider {tests}"
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("MASKBATCH_DATA", str(REPO.parent / "shared" / "data"))

    started = time.perf_counter()
    baseline = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True)
    base_s = time.perf_counter() - started
    if baseline.returncode != 0:
        raise SystemExit(f"{module}: the tests fail without any mutant:\n{baseline.stdout[-3000:]}")
    timeout = max(60.0, 4 * base_s)
    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "maskbatch/{module}.py"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    session = work / "session.sqlite"
    cr = str(Path(python).with_name("cosmic-ray"))
    subprocess.run([cr, "init", str(config), str(session)], cwd=work, env=env, check=True)

    with use_db(str(session)) as db:
        spans = annotation_spans(work / "maskbatch" / f"{module}.py")
        items, n_annotation = [], 0
        for it in db.pending_work_items:
            pos = tuple(it.mutations[0].start_pos)
            if any(start <= pos < end for start, end in spans):
                db.set_result(it.job_id, WorkResult(output="type annotation",
                                                    worker_outcome=WorkerOutcome.SKIPPED))
                n_annotation += 1
            else:
                items.append(it)
        items.sort(key=lambda it: (it.mutations[0].operator_name, it.mutations[0].occurrence))
        total = len(items)
        kept = items if not sample or sample >= total else random.Random(seed).sample(items, sample)
        kept_ids = {it.job_id for it in kept}
        for it in items:
            if it.job_id not in kept_ids:
                db.set_result(it.job_id, WorkResult(output="not sampled",
                                                    worker_outcome=WorkerOutcome.SKIPPED))
    for pyc in work.rglob("__pycache__"):
        shutil.rmtree(pyc, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([cr, "exec", str(config), str(session)], cwd=work, env=env, check=True)
    exec_s = time.perf_counter() - started
    return summarize(module, total, len(kept), n_annotation, selected, base_s, exec_s, seed)


def summarize(module: str, total: int, sampled: int, n_annotation: int, selected: list[str],
              base_s: float, exec_s: float, seed: int) -> dict:
    """Counts and survivors of a module's session (finished or stopped early: the mutants run so
    far), written to build/mutants/MODULE.json and MODULE.survivors.txt."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    session = BUILD / module / "session.sqlite"
    counts = {"killed": 0, "survived": 0, "timeout": 0, "incompetent": 0}
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            if result.test_outcome == TestOutcome.KILLED and result.output == "timeout":
                counts["timeout"] += 1  # cosmic-ray counts a timeout as killed
            elif result.worker_outcome != WorkerOutcome.NORMAL \
                    or result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            else:
                counts["survived"] += 1
                survivors.append({"line": m.start_pos[0], "operator": m.operator_name,
                                  "occurrence": m.occurrence, "function": m.definition_name,
                                  "diff": result.diff})
    run = counts["killed"] + counts["survived"] + counts["timeout"]
    summary = {"module": module, "mutants": total, "sampled": sampled, **counts,
               "annotation_mutants_not_run": n_annotation,
               "score": round((counts["killed"] + counts["timeout"]) / run, 3) if run else None,
               "tests": selected, "baseline_s": round(base_s, 1), "exec_s": round(exec_s),
               "seed": seed, "survivors": sorted(survivors, key=lambda s: s["line"])}
    (BUILD / f"{module}.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(BUILD / f"{module}.survivors.txt", "w") as f:
        for s in summary["survivors"]:
            f.write(f"--- line {s['line']} in {s['function']}: {s['operator']} #{s['occurrence']}\n"
                    f"{s['diff']}\n")
    return summary


def markdown_table(rows: list[dict]) -> str:
    lines = ["| module | mutants | run (sample) | killed | survived | timeout | incompetent | score |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['module']} | {r['mutants']} | {r['sampled']} | {r['killed']} | "
                     f"{r['survived']} | {r['timeout']} | {r['incompetent']} | {r['score']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(TESTS), help="comma-separated")
    parser.add_argument("--sample", type=int, default=40, help="mutants per module; 0 = all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collect", action="store_true",
                        help="summarize the modules' sessions as they are (e.g. stopped early)")
    parser.add_argument("--report", action="store_true",
                        help="only print the Markdown table of the results in build/mutants")
    args = parser.parse_args()
    if args.report:
        print(markdown_table([json.loads((BUILD / f"{m}.json").read_text())
                              for m in args.modules.split(",") if (BUILD / f"{m}.json").is_file()]))
        return
    if args.collect:
        for module in args.modules.split(","):
            from cosmic_ray.work_db import WorkDB, use_db
            from cosmic_ray.work_item import WorkerOutcome

            with use_db(str(BUILD / module / "session.sqlite"), WorkDB.Mode.open) as db:
                done = [r for _, r in db.completed_work_items]
                n_annotation = sum(r.output == "type annotation" for r in done)
                total = db.num_work_items - n_annotation
                ran = sum(r.worker_outcome != WorkerOutcome.SKIPPED for r in done)
            print(summarize(module, total, ran, n_annotation, TESTS[module], 0.0, 0.0,
                            args.seed)["score"])
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    rows = []
    for module in args.modules.split(","):
        try:
            rows.append(run_module(module, args.sample, args.seed, sys.executable))
        except SystemExit as exc:  # one module's failing baseline does not stop the others
            print(exc, file=sys.stderr)
    print(f"\n{'module':10}{'mutants':>9}{'sampled':>9}{'killed':>8}{'survived':>10}{'timeout':>9}"
          f"{'incompetent':>13}{'score':>7}")
    for r in rows:
        print(f"{r['module']:10}{r['mutants']:>9}{r['sampled']:>9}{r['killed']:>8}{r['survived']:>10}"
              f"{r['timeout']:>9}{r['incompetent']:>13}{r['score'] if r['score'] is not None else '-':>7}")


if __name__ == "__main__":
    main()
