"""``appliance eval``: load, run, judge, print, save; the exit code says whether every scenario passed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import trio

from appliance.evaluation.judge import Verdict
from appliance.evaluation.runner import Checks, Evaluator, ResultStore, ScenarioOutcome, WordsOnly
from appliance.evaluation.scenarios import JudgeSpec, ScenarioError, ScenarioFile, load_scenarios

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def results_path(scenarios: Path) -> Path:
    return scenarios.with_name(scenarios.name + ".results.json")


def judge_config(config: Any, spec: JudgeSpec) -> Any:
    """The judge: the robot's ``[llm]`` with the scenario file's overrides, and none of the robot's tools,
    guardrails or hooks (the judge only reads and answers)."""
    update: dict[str, Any] = {"tools": [], "mcp_servers": [], "guardrails": [], "on_finish": None, "camera": "off"}
    update |= {name: getattr(spec, name) for name in ("provider", "model", "base_url") if getattr(spec, name)}
    if spec.provider and spec.provider != config.llm.provider:
        update.setdefault("api_key", None)  # the robot's key belongs to its own provider
    if spec.provider and not spec.base_url:
        update["base_url"] = None
    return config.llm.model_copy(update=update)


def needs_judge(scenarios: ScenarioFile) -> bool:
    return any(s.goal or any(t.criteria for t in s.turns) for s in scenarios.scenario)


Done = list[tuple[ScenarioOutcome | None, dict[str, Any] | None, str]]


def run_eval(
    config: Any,
    path: Path,
    out: TextIO,
    *,
    results: Path | None = None,
    rerun: bool = False,
    only: list[str] | None = None,
) -> int:
    from appliance.assembly.brains import cloud_brain_factory
    from appliance.conversation.local_voice import LocalVoice
    from appliance.settings_base import ConfigError

    try:
        scenarios, chosen, checks, store = _load(path, results, only)
    except ScenarioError as exc:
        print(f"eval: {exc}", file=out)
        return EXIT_INPUT
    judge_cfg = judge_config(config, scenarios.judge)
    missing = _missing_judge_key(scenarios, judge_cfg)
    if missing:
        print(f"eval: {missing}", file=out)
        return EXIT_INPUT
    try:
        build = cloud_brain_factory(config, LocalVoice(), speech=(WordsOnly(), WordsOnly()))
    except ConfigError as exc:
        print(f"eval: the robot's brain cannot be built:\n{exc.report()}", file=out)
        return EXIT_INPUT
    context = (
        f"{config.conversation.system_prompt}|{config.llm.provider}|{config.llm.model_name}|{judge_cfg.model_name}"
    )
    done = trio.run(_run_all, build, judge_cfg, scenarios, chosen, checks, store, context, rerun, out)
    return _summary(done, store, out)


def _load(path: Path, results: Path | None, only: list[str] | None) -> tuple[ScenarioFile, list[Any], Checks, Any]:
    scenarios = load_scenarios(path)
    chosen = [s for s in scenarios.scenario if not only or s.name in only]
    unknown = sorted(set(only or ()) - {s.name for s in scenarios.scenario})
    if unknown:
        raise ScenarioError(f"{path}: no scenario named {', '.join(map(repr, unknown))}")
    checks = Checks(path.parent)
    problems = checks.problems(scenarios)
    if problems:
        raise ScenarioError(f"{path}: " + "; ".join(problems))
    return scenarios, chosen, checks, ResultStore(results or results_path(path))


def _missing_judge_key(scenarios: ScenarioFile, judge_cfg: Any) -> str | None:
    from appliance.providers import factory

    keyless = not factory.needs_key("llm", judge_cfg.provider, judge_cfg.base_url)
    if needs_judge(scenarios) and not keyless and factory.key_for(judge_cfg.provider, judge_cfg.api_key) is None:
        return (
            f"the judge ({judge_cfg.provider}) needs an API key: set "
            f"{factory.key_variable(judge_cfg.provider)}, or give [judge] a base_url"
        )
    return None


async def _run_all(
    build: Any,
    judge_cfg: Any,
    scenarios: ScenarioFile,
    chosen: list[Any],
    checks: Checks,
    store: Any,
    context: str,
    rerun: bool,
    out: TextIO,
) -> Done:
    from appliance.providers import factory

    brain = build()
    judge = factory.build_llm(judge_cfg) if needs_judge(scenarios) else None
    evaluator = Evaluator(brain, judge, scenarios.judge, checks, context)
    done: Done = []
    try:
        for spec in chosen:
            earlier = None if rerun else store.done(spec, spec.digest(context))
            if earlier is not None:
                done.append((None, earlier, spec.name))
                _print_skipped(spec.name, earlier, out)
                continue
            outcome = await evaluator.run(spec)
            store.save(outcome)
            _print_outcome(outcome, out)
            done.append((outcome, None, spec.name))
    finally:
        for client in (getattr(brain, "llm", None), judge):
            if client is not None:
                await client.aclose()
    return done


def _summary(done: Done, store: Any, out: TextIO) -> int:
    passed = sum(
        1 for outcome, earlier, _ in done if (outcome.passed if outcome else bool(earlier and earlier["passed"]))
    )
    skipped = sum(1 for outcome, _, _ in done if outcome is None)
    failed = len(done) - passed
    print(
        f"\n{len(done)} scenario{'s' if len(done) != 1 else ''}: {passed} passed, {failed} failed"
        f"{f', {skipped} not run again (earlier results; --rerun to run them)' if skipped else ''}"
        f"; results in {store.path}",
        file=out,
    )
    return EXIT_OK if failed == 0 else EXIT_FAILED


def _mark(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _print_verdicts(verdicts: list[Verdict], out: TextIO) -> None:
    for verdict in verdicts:
        print(f"          {_mark(verdict.passed)} ({verdict.by}) {verdict.reason}", file=out)


def _print_outcome(outcome: ScenarioOutcome, out: TextIO) -> None:
    print(f"{_mark(outcome.passed)}  {outcome.name}", file=out)
    for number, turn in enumerate(outcome.turns, 1):
        print(f"  turn {number}: {turn.said!r} -> {turn.reply!r}", file=out)
        _print_verdicts(turn.verdicts, out)
    if outcome.goal:
        print("  goal:", file=out)
        _print_verdicts(outcome.goal, out)
    if outcome.error:
        print(f"  ERROR {outcome.error}", file=out)


def _print_skipped(name: str, earlier: dict[str, Any], out: TextIO) -> None:
    print(f"{_mark(bool(earlier.get('passed')))}  {name} (earlier result, not run again)", file=out)
