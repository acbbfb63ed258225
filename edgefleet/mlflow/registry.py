"""Every federated round's global model, versioned in the MLflow model registry with its lineage.

- **Tracking.** A federated run is one MLflow run (experiment ``edgefleet-federation``): its params
  (strategy, clients, DP settings, base model), per-round metrics (train loss, held-out loss and
  perplexity, ε per client, the largest ε) and per-round artifacts (the adapter in peft format and
  a model card).
- **Registry.** Each round's adapter is registered as a new version of ``mlflow.model_name`` as a
  pyfunc that generates text (:mod:`pyfunc_model`), tagged with its lineage: run, round, strategy,
  participating clients (the nodes whose data contributed), (ε, δ), the parent version and the base
  model. It gets the alias ``candidate``. Aliases, never the deprecated stages.
- **Promotion gate** (:mod:`gate`, pure): ``champion`` moves to the candidate only if every client
  is within its privacy budget and it is better for users: its task score (``eval/scores.py``)
  beats the champion's (the base model's, for the first version) by ``task_margin``, its divergence
  from the base on general chat stays within ``max_divergence`` and it still answers every fact the
  base answers. Without held-out questions, the held-out loss must beat the champion's by
  ``margin``. The decision, its reason and the scores are tags on the version.
- **Exactly once.** A round is published by named, idempotent steps (:data:`STEPS`): find or
  make the run, log the artifacts and the model, the metrics, then create the version *with* its
  identity tags (run, round) in one call, then the ``candidate`` alias, the gate's decision, the
  ``champion`` alias and last the gate's tag. Stopped after any step, the next try finds what is
  done and finishes: one version per round, each gated.
- **Outbox** (:mod:`outbox`). Each round goes to a local outbox first and leaves it once all its
  steps are done. If the tracking server does not answer, rounds wait there and are published, in
  order, the next time it answers. Entries are independent: one that keeps failing is quarantined
  with its error after ``max_attempts`` and the others go on. Nothing is lost.

The embedded default is a SQLite store with a local artifact folder; ``mlflow.tracking_uri`` points
at a real ``mlflow server`` instead, through the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.config import use_mlflow_uris
from edgefleet.errors import EdgefleetError
from edgefleet.eval.scores import SiteScore
from edgefleet.mlflow.gate import GateDecision, UserScores, gate
from edgefleet.mlflow.outbox import Outbox, OutboxEntry, RoundKey, outbox_for

log = logging.getLogger(__name__)

EXPERIMENT = "edgefleet-federation"
CANDIDATE, CHAMPION = "candidate", "champion"
RUN_TAG, ROUND_TAG = "edgefleet.run", "edgefleet.round"  # a version's identity
GATE_TAG, GATE_REASON_TAG = "edgefleet.gate", "edgefleet.gate_reason"
# Written by promote/rollback and read by the rollout (serve/convergence.py): the champion a
# version replaced, and why the fleet rejected it.
PREVIOUS_TAG, ROLLED_BACK_TAG = "edgefleet.previous_champion", "edgefleet.rolled_back"
# The rollout's progress, written by serve/reconciler.py: "promoted to all edge nodes: <reason>",
# and when the canary began (unix seconds).
ROLLOUT_TAG, CANARY_SINCE_TAG = "edgefleet.rollout", "edgefleet.canary_since"
# On the registered model: which reconciler acts on the fleet, until when ("<holder> <unix s>")
LEASE_TAG = "edgefleet.reconciler_lease"
# How a round is published (ModelRegistry._step_<name>), in order; each one idempotent.
STEPS = ("run", "artifacts", "model", "metrics", "version", "candidate", "decide", "champion", "gate")


@dataclass(frozen=True)
class RoundRecord:
    """What the registry needs of one committed round (also what the outbox stores)."""

    run: str
    round: int
    strategy: str
    clients: list[str]
    train_loss: float
    held_out_loss: float
    perplexity: float
    epsilon: dict[str, float]
    delta: float
    budget_epsilon: float
    user_epsilon: float | None
    base_model: dict[str, Any]  # the ModelSpec the adapter applies to
    params: dict[str, Any]
    scores: dict[str, Any] | None = None  # eval.scores.Quality's fields, when the sites have held-out questions
    base_task_score: float | None = None  # the base model's: what a first version must beat

    @property
    def user_scores(self) -> UserScores | None:
        if self.scores is None:
            return None
        s = self.scores
        per_site = tuple(SiteScore.from_json(site) for site in s.get("per_site", ()))
        return UserScores(s["task_score"], s["divergence"], tuple(s["facts_lost"]), s.get("answer_match"), per_site)


def round_metrics(r: RoundRecord) -> dict[str, float | None]:
    """A round's metrics as the run logs them (at step ``r.round``)."""
    metrics: dict[str, float | None] = {
        "train_loss": r.train_loss,
        "perplexity": r.perplexity,
        "epsilon_max": max(r.epsilon.values(), default=0.0),
        **{f"epsilon.{c}": e for c, e in r.epsilon.items()},
    }
    if r.user_epsilon is not None:
        metrics["user_epsilon"] = r.user_epsilon
    scores = r.user_scores
    if scores is not None:
        metrics |= {"task_score": scores.task_score, "divergence": scores.divergence}
        metrics["facts_lost"] = float(len(scores.facts_lost))
        metrics["answer_match"] = scores.answer_match
        for site in scores.per_site:
            metrics |= {f"task_score.{site.site}": site.task_score, f"answer_match.{site.site}": site.answer_match}
    metrics["held_out_loss"] = r.held_out_loss  # the one the metrics step looks for
    return metrics


class TrackingUnavailable(EdgefleetError, RuntimeError):
    """The tracking server did not answer."""


@dataclass
class FlushResult:
    """What one pass over the outbox did: the versions it published, per round; the rounds whose
    attempt failed (they wait) and those quarantined now."""

    published: dict[RoundKey, str] = field(default_factory=dict)
    failed: list[RoundKey] = field(default_factory=list)
    quarantined: list[RoundKey] = field(default_factory=list)

    @property
    def last(self) -> str | None:
        return list(self.published.values())[-1] if self.published else None


@dataclass
class _Publication:
    """One round's publication in progress: what the steps found or made so far."""

    record: RoundRecord
    adapter_dir: Path
    client: Any
    experiment_id: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    version: Any = None  # mlflow's ModelVersion
    decision: GateDecision | None = None


def _quoted(value: str) -> str:
    """``value`` as a string in an MLflow filter, which has no escapes: quoted with the quote it lacks."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters: MLflow cannot search for it")


class ModelRegistry:
    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        outbox: str | Path,
        registry_uri: str | None = None,
        margin: float = 0.0,
        task_margin: float = 0.0,
        max_divergence: float = math.inf,
        max_attempts: int = 5,
        count_every_s: float = 60.0,
        after_step: Callable[[str, RoundRecord], None] | None = None,
    ) -> None:
        """``registry_uri``: where versions and aliases live (default: the tracking store).
        ``max_attempts``: failures (at most one each ``count_every_s``) before an outbox entry is
        quarantined. ``after_step``: called
        after each publication step with its name (fault-injection tests stop the publisher there)."""
        self.uri, self.name, self.margin = tracking_uri, model_name, margin
        self.registry_uri = registry_uri or tracking_uri
        self.task_margin, self.max_divergence = task_margin, max_divergence
        # one outbox per destination: configs sharing a cache must not publish each other's rounds
        folder = outbox_for(outbox, self.uri, self.registry_uri, model_name)
        self.outbox = Outbox(
            folder,
            max_attempts=max_attempts,
            destination=f"{model_name} at {self.registry_uri}",
            count_every_s=count_every_s,
        )
        self.outbox.adopt_entries_in(Path(outbox))  # an earlier release kept one outbox per cache
        self.after_step = after_step

    @classmethod
    def from_config(cls, cfg: Any) -> ModelRegistry:
        """The registry ``cfg.mlflow`` names, with the outbox in the cache."""
        return cls(
            cfg.tracking_uri,
            cfg.mlflow.model_name,
            registry_uri=cfg.registry_uri,
            outbox=cfg.cache_dir / "mlflow" / "outbox",
            margin=cfg.mlflow.promotion_margin,
            task_margin=cfg.mlflow.task_margin,
            max_divergence=cfg.mlflow.max_divergence,
        )

    # ------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        from mlflow import MlflowClient

        self._probe()
        use_mlflow_uris(self.uri, self.registry_uri)  # MLflow resolves models:/ sources through its globals
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.registry_uri)

    def _probe(self) -> None:
        for uri in dict.fromkeys((self.uri, self.registry_uri)):
            if uri.startswith(("http://", "https://")):
                try:
                    urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3).read()
                except OSError as exc:
                    raise TrackingUnavailable(f"{uri}: {exc}") from None

    # ------------------------------------------------------------ publishing rounds

    def publish(self, record: RoundRecord, adapter_dir: Path) -> str | None:
        """Register ``record``'s model (after anything older waiting in the outbox).

        Returns its version; None if it could not be published now (the server is unreachable, or
        an attempt failed: the round waits in the outbox, and the failure is logged on the entry).
        Raises only if the round cannot be written to the outbox.
        """
        key = RoundKey(record.run, record.round)
        self.outbox.add(key, json.dumps(asdict(record), sort_keys=True), adapter_dir)
        try:
            return self.flush().published.get(key)
        except TrackingUnavailable:
            return None

    def flush(self) -> FlushResult:
        """Publish every round waiting in the outbox, oldest first, each on its own: one that fails
        is counted (and quarantined after ``max_attempts``) and the others go on.

        Raises :class:`TrackingUnavailable` if the server does not answer (nothing is counted then).
        """
        result = FlushResult()
        with self.outbox.exclusive():
            self._flush_entries(result)
        return result

    def _flush_entries(self, result: FlushResult) -> None:
        for entry in self.outbox.entries():
            try:
                record = RoundRecord(**json.loads(entry.record_json))
                result.published[entry.key] = self._publish(record, entry.adapter_dir)
            except TrackingUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is this entry's, never the caller's
                self._probe()  # a server that went away mid-publish: wait, do not count it
                error = f"{type(exc).__name__}: {exc}"
                if self.outbox.failed(entry, error, transient=_transient(exc)):
                    log.error("MLflow: %s round %d quarantined after %s", entry.key.run, entry.key.round, error)
                    result.quarantined.append(entry.key)
                else:
                    log.warning("MLflow: publishing %s round %d failed: %s", entry.key.run, entry.key.round, error)
                    result.failed.append(entry.key)
                continue
            self.outbox.done(entry)

    def pending(self) -> list[str]:
        return [e.folder.name for e in self.outbox.entries()]

    def quarantined(self) -> list[OutboxEntry]:
        return self.outbox.quarantined()

    def _publish(self, record: RoundRecord, adapter_dir: Path) -> str:
        """Run the publication steps (:data:`STEPS`) for one round. Each step is idempotent and
        what it finds done it leaves, so a publisher stopped after any step finishes the round
        on its next try, with one version. A version carries its identity from its creation;
        once it holds the gate's tag, the round is done."""
        client = self._client()
        p = _Publication(record, adapter_dir, client, version=self._find_version(client, record.run, record.round))
        first = 0
        if p.version is not None:
            if GATE_TAG in p.version.tags:
                return str(p.version.version)
            first = STEPS.index("version")  # everything before it is done
        for step in STEPS[first:]:
            getattr(self, f"_step_{step}")(p)
            if self.after_step is not None:
                self.after_step(step, record)
        return str(p.version.version)

    # The steps, in order. ``p`` collects what earlier steps found or made.

    def _step_run(self, p: _Publication) -> None:
        """The federated run's MLflow run (found by its tag, else made), with its params."""
        from mlflow.entities import Param

        client, r = p.client, p.record
        experiment = client.get_experiment_by_name(EXPERIMENT)
        p.experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(EXPERIMENT, artifact_location=self._artifact_location())
        )
        run = self._find_run(client, p.experiment_id, r.run)
        if run is None:
            from mlflow.tracking.context.registry import resolve_tags

            # MLflow's system tags (user, source, git) as mlflow.start_run adds them; not start_run
            # itself, which would resume a foreign run named by MLFLOW_RUN_ID in the environment.
            run = client.create_run(p.experiment_id, run_name=r.run, tags=resolve_tags({RUN_TAG: r.run}))
        p.run_id = run.info.run_id
        missing = [Param(k, str(v)) for k, v in r.params.items() if k not in run.data.params]
        if missing:
            client.log_batch(p.run_id, params=missing)

    def _step_artifacts(self, p: _Publication) -> None:
        """The round's adapter, model card and evaluation table in the run (``round-N/``)."""
        client, r = p.client, p.record
        folder = f"round-{r.round}"
        client.log_artifacts(p.run_id, str(p.adapter_dir), artifact_path=f"{folder}/adapter")
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "MODEL_CARD.md"
            card.write_text(model_card(r))
            client.log_artifact(p.run_id, str(card), artifact_path=folder)
        scores = r.user_scores
        table = f"{folder}/evaluation.json"
        logged = {f.path for f in client.list_artifacts(p.run_id, folder)}
        # the UI's artifact view shows it as a table; log_table appends, so a retry skips it
        if scores is not None and scores.per_site and table not in logged:
            client.log_table(
                p.run_id,
                {
                    "site": [s.site for s in scores.per_site],
                    "held-out questions": [s.questions for s in scores.per_site],
                    "task score": [s.task_score for s in scores.per_site],
                    "answers right": [s.answer_match for s in scores.per_site],
                },
                artifact_file=table,
            )

    def _step_model(self, p: _Publication) -> None:
        """The round's pyfunc as a logged model of the run (``round-N``), not yet registered."""
        import mlflow
        from mlflow.entities import LoggedModelStatus

        import edgefleet
        from edgefleet.mlflow import pyfunc_model

        name = f"round-{p.record.round}"
        ready = [
            m
            for m in p.client.search_logged_models(
                [p.experiment_id], filter_string=f"source_run_id = '{p.run_id}' AND name = '{name}'"
            )
            if m.status == LoggedModelStatus.READY
        ]
        if ready:  # logged before a stop: the same model, not a second one
            p.model_id = min(ready, key=lambda m: m.creation_timestamp).model_id
            return
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=p.run_id), warnings.catch_warnings():
            # MLflow's advice to add type hints to predict: the explicit signature holds the schema
            warnings.filterwarnings("ignore", message=".*type hints to the `predict`")
            spec = Path(tmp) / "base_model.json"
            spec.write_text(json.dumps(p.record.base_model))
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=pyfunc_model.EdgefleetLLM(),
                artifacts={"adapter": str(p.adapter_dir), "spec": str(spec)},
                code_paths=[str(Path(edgefleet.__file__).parent)],  # the code that loads it travels with it
                pip_requirements=pyfunc_model.requirements(),
                signature=pyfunc_model.signature(),
                input_example=pyfunc_model.INPUT_EXAMPLE,  # MLflow loads the model once to check it
            )
        p.model_id = info.model_id

    def _step_metrics(self, p: _Publication) -> None:
        """The round's metrics at step N, linked to its logged model; in one batch, so one is enough
        to tell they were logged."""
        from mlflow.entities import Metric

        r = p.record
        if any(m.step == r.round for m in p.client.get_metric_history(p.run_id, "held_out_loss")):
            return
        now = int(time.time() * 1000)
        p.client.log_batch(
            p.run_id,
            metrics=[
                Metric(k, v, now, r.round, model_id=p.model_id)
                for k, v in round_metrics(r).items()
                if v is not None and math.isfinite(v)
            ],
        )

    def _step_version(self, p: _Publication) -> None:
        """The model version, created with its identity and lineage tags in one call (one
        transaction in MLflow's stores), so no version ever exists without them."""
        from mlflow.exceptions import MlflowException

        client, r = p.client, p.record
        p.version = self._find_version(client, r.run, r.round) or self._adopt_untagged(p)
        if p.version is not None:  # an earlier release tagged after creating: complete what it missed
            p.run_id = p.run_id or p.version.run_id
            for key, value in self._tags(p).items():
                if key not in p.version.tags:
                    client.set_model_version_tag(self.name, str(p.version.version), key, value)
            return
        try:
            client.create_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        p.version = client.create_model_version(
            self.name,
            source=f"models:/{p.model_id}",
            run_id=p.run_id,
            tags=self._tags(p),
            model_id=p.model_id,
            await_creation_for=60,
        )

    def _step_candidate(self, p: _Publication) -> None:
        """``candidate``: the newest version (a round retried late does not take it back)."""
        mine = int(p.version.version)
        current = self._alias(p.client, CANDIDATE)
        if current is None or int(current.version) < mine:
            p.client.set_registered_model_alias(self.name, CANDIDATE, str(mine))

    def _step_decide(self, p: _Publication) -> None:
        """The gate's decision and its reason on the version (and, if it promotes, the champion it replaces)."""
        client, r, version = p.client, p.record, str(p.version.version)
        tags = client.get_model_version(self.name, version).tags
        champion = self._alias(client, CHAMPION)
        if champion is not None and str(champion.version) == version:  # promoted before a stop
            p.decision = GateDecision(True, tags.get(GATE_REASON_TAG, ""))
            return
        if ROLLED_BACK_TAG in tags:  # a retry after the fleet rejected it: it never comes back by itself
            p.decision = GateDecision(False, f"rolled back earlier: {tags[ROLLED_BACK_TAG]}")
            client.set_model_version_tag(self.name, version, GATE_REASON_TAG, p.decision.reason)
            return
        if champion is not None and _later(champion, r, int(version)):  # a late retry of an older round
            p.decision = GateDecision(False, f"v{champion.version}, a later version, is already the champion")
            client.set_model_version_tag(self.name, version, GATE_REASON_TAG, p.decision.reason)
            return
        champion_loss = float(champion.tags["edgefleet.held_out_loss"]) if champion else None
        to_beat = r.base_task_score
        if champion is not None and "edgefleet.task_score" in champion.tags:
            to_beat = float(champion.tags["edgefleet.task_score"])
        p.decision = gate(
            r.held_out_loss,
            champion_loss,
            margin=self.margin,
            within_budget=all(e <= r.budget_epsilon for e in r.epsilon.values()),
            scores=r.user_scores,
            to_beat=to_beat,
            task_margin=self.task_margin,
            max_divergence=self.max_divergence,
        )
        client.set_model_version_tag(self.name, version, GATE_REASON_TAG, p.decision.reason)
        if p.decision.promote and champion is not None:
            client.set_model_version_tag(self.name, version, PREVIOUS_TAG, str(champion.version))

    def _step_champion(self, p: _Publication) -> None:
        if p.decision is not None and p.decision.promote:
            p.client.set_registered_model_alias(self.name, CHAMPION, str(p.version.version))

    def _step_gate(self, p: _Publication) -> None:
        """Last: the gate's tag says the round is done (a version without it is gated on the next flush)."""
        assert p.decision is not None
        value = "promoted" if p.decision.promote else "held"
        p.client.set_model_version_tag(self.name, str(p.version.version), GATE_TAG, value)

    # ------------------------------------------------------------ lookups

    def _find_version(self, client: Any, run: str, round_id: int) -> Any:
        """The version holding (run, round), by its tags. The filter names only the round (a number):
        the run name is compared here, exactly, so no quote in it can break MLflow's filter parser."""
        found = [
            v
            for v in client.search_model_versions(f"name = {_quoted(self.name)} and tag.`{ROUND_TAG}` = '{round_id}'")
            if v.tags.get(RUN_TAG) == run
        ]
        return min(found, key=lambda v: int(v.version)) if found else None

    def _adopt_untagged(self, p: _Publication) -> Any:
        """A version an earlier release registered and stopped before tagging: it came from this
        run's logged model ``round-N``. It gets its tags now, the round's last, so it is found by
        them only once they are all there."""
        name = f"round-{p.record.round}"
        for v in p.client.search_model_versions(f"name = {_quoted(self.name)} and run_id = '{p.run_id}'"):
            model_id = str(v.source).removeprefix("models:/")
            if ROUND_TAG in v.tags or not model_id.startswith("m-"):
                continue
            if p.client.get_logged_model(model_id).name != name:
                continue
            p.model_id = model_id
            for key, value in self._tags(p).items():  # dicts keep order: ROUND_TAG is last
                p.client.set_model_version_tag(self.name, str(v.version), key, value)
            return p.client.get_model_version(self.name, str(v.version))
        return None

    def _find_run(self, client: Any, experiment_id: str, run: str) -> Any:
        if "'" not in run:
            found = client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{run}'", max_results=1)
        elif '"' not in run:
            found = client.search_runs([experiment_id], f'tags.`{RUN_TAG}` = "{run}"', max_results=1)
        else:  # both quotes: MLflow's filter cannot say it, so compare every tagged run here
            found = [
                r
                for r in client.search_runs([experiment_id], f"tags.`{RUN_TAG}` != ''", max_results=50_000)
                if r.data.tags.get(RUN_TAG) == run
            ]
        return found[0] if found else None

    def _tags(self, p: _Publication) -> dict[str, str]:
        r, scores = p.record, p.record.user_scores
        parent = self._parent(p.client, r)
        tags = {
            RUN_TAG: r.run,
            "edgefleet.strategy": r.strategy,
            "edgefleet.clients": ",".join(r.clients),
            "edgefleet.data_lineage": ",".join(r.clients),
            "edgefleet.epsilon_max": f"{max(r.epsilon.values(), default=0.0):.4f}",
            "edgefleet.epsilon": json.dumps({c: round(e, 4) for c, e in r.epsilon.items()}),
            "edgefleet.delta": f"{r.delta:g}",
            "edgefleet.parent_version": parent or "",
            "edgefleet.base_model": r.base_model.get("source", ""),
            "edgefleet.held_out_loss": f"{r.held_out_loss:.6f}",
            "edgefleet.mlflow_run_id": p.run_id or "",
        }
        if r.user_epsilon is not None:
            tags["edgefleet.user_epsilon"] = f"{r.user_epsilon:.4f}"
        if scores is not None:
            tags["edgefleet.task_score"] = f"{scores.task_score:.6f}"
            tags["edgefleet.divergence"] = f"{scores.divergence:.6f}"
            tags["edgefleet.facts_lost"] = json.dumps(list(scores.facts_lost))
            if scores.answer_match is not None and math.isfinite(scores.answer_match):
                tags["edgefleet.answer_match"] = f"{scores.answer_match:.4f}"
        tags[ROUND_TAG] = str(r.round)  # last: with the run's tag, the identity a lookup finds
        return tags

    def _artifact_location(self) -> str | None:
        """Beside a SQLite store (MLflow would use ./mlruns of whatever directory the command ran
        in); a tracking server decides for itself."""
        parts = urllib.parse.urlsplit(self.uri)
        if parts.scheme != "sqlite" or parts.path in ("", "/", "/:memory:"):
            return None
        # sqlite:///rel.db and sqlite:////abs.db: the database path follows the third slash; the
        # query holds driver options; %xx is quoted as in any URL
        database = urllib.parse.unquote(parts.path[1:])
        return (Path(database).parent / "artifacts").resolve().as_uri()

    def _parent(self, client: Any, r: RoundRecord) -> str | None:
        if r.round > 1:
            prev = self._find_version(client, r.run, r.round - 1)
            if prev is not None:
                return str(prev.version)
        champion = self._champion(client)
        return str(champion.version) if champion else None

    def _champion(self, client: Any) -> Any:
        return self._alias(client, CHAMPION)

    def _alias(self, client: Any, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    # ------------------------------------------------------------ operators' verbs

    def versions(self) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:  # search results leave aliases empty on some stores: read them from the registered model
            aliases = client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return []
        out = []
        for v in client.search_model_versions(f"name = '{self.name}'"):
            mine = sorted(a for a, ver in aliases.items() if str(ver) == str(v.version))
            out.append(
                {"version": str(v.version), "aliases": mine, "tags": dict(v.tags), "created": v.creation_timestamp}
            )
        return sorted(out, key=lambda v: int(v["version"]))

    def show(self, version: str) -> dict[str, Any]:
        for v in self.versions():
            if v["version"] == str(version):
                return v
        raise KeyError(f"{self.name} has no version {version}")

    def promote(self, version: str, reason: str = "promoted by an operator") -> None:
        client = self._client()
        self.show(version)  # raises a clear KeyError for an unknown version
        champion = self._champion(client)
        if champion is not None and str(champion.version) != str(version):
            client.set_model_version_tag(self.name, str(version), PREVIOUS_TAG, str(champion.version))
        # an operator's promotion is a fresh rollout, even of a version the fleet rejected before
        for stale in (ROLLED_BACK_TAG, ROLLOUT_TAG, CANARY_SINCE_TAG):
            if stale in client.get_model_version(self.name, str(version)).tags:
                client.delete_model_version_tag(self.name, str(version), stale)
        client.set_registered_model_alias(self.name, CHAMPION, str(version))
        client.set_model_version_tag(self.name, str(version), GATE_REASON_TAG, reason)

    def rollback(self, reason: str = "rolled back by an operator", *, version: str | None = None) -> str:
        """Move ``champion`` back to the version it replaced; tag the demoted one with ``reason``.

        ``version``: roll back only if that version is still the champion (a rollout judging it).
        """
        client = self._client()
        champion = self._champion(client)
        if champion is None:
            raise KeyError(f"{self.name} has no champion to roll back")
        if version is not None and str(champion.version) != str(version):
            raise KeyError(f"{self.name} v{version} is no longer the champion (v{champion.version} is)")
        previous = champion.tags.get(PREVIOUS_TAG)
        if not previous:
            raise KeyError(f"{self.name} v{champion.version} replaced no earlier champion: nothing to roll back to")
        # The mark first: a crash before the alias moves leaves a marked champion (the rollout
        # serves its fallback everywhere) and a retried publication never re-promotes it.
        client.set_model_version_tag(self.name, str(champion.version), ROLLED_BACK_TAG, reason)
        before = client.get_model_version(self.name, previous).tags if previous else {}
        if ROLLED_BACK_TAG in before:  # rejected itself: back to the last version the fleet approved
            previous = self.last_approved(previous)
            if previous is None:
                return str(champion.version)  # nothing approved before it: it stays, marked
            before = client.get_model_version(self.name, previous).tags
        if not _approved(before) and CANARY_SINCE_TAG in before:  # its own canary starts afresh
            client.delete_model_version_tag(self.name, previous, CANARY_SINCE_TAG)
        client.set_registered_model_alias(self.name, CHAMPION, previous)
        return previous

    def latest_run(self) -> dict[str, Any] | None:
        """The federated run that started last: its name, last registered round, ε per client and budget."""
        client = self._client()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        run = runs[0]
        history = client.get_metric_history(run.info.run_id, "held_out_loss")
        budget = run.data.params.get("client_budget_epsilon")
        return {
            "run": run.data.tags.get("edgefleet.run", run.info.run_name),
            "round": max((m.step for m in history), default=None),
            "epsilon": {
                k.removeprefix("epsilon."): v for k, v in sorted(run.data.metrics.items()) if k.startswith("epsilon.")
            },
            "budget": float(budget) if budget else None,
        }

    def champion_version(self) -> str | None:
        champion = self._champion(self._client())
        return str(champion.version) if champion is not None else None

    def hold_lease(self, holder: str, ttl_s: float, *, now: float | None = None) -> str | None:
        """Take or renew the reconciler lease for ``ttl_s`` seconds: None when ``holder`` holds it
        now, else who does (and until when). Best effort: MLflow has no compare-and-set, so after
        writing, the tag is read back and a writer that lost the race backs off; two takers at
        the same instant may both act for one pass, and their actions are idempotent."""
        from mlflow.exceptions import MlflowException

        client, now = self._client(), time.time() if now is None else now
        current = self._lease(client)
        if current is not None and current[0] != holder and current[1] > now:
            return f"{current[0]} (until {time.strftime('%H:%M:%S', time.localtime(current[1]))})"
        try:
            client.set_registered_model_tag(self.name, LEASE_TAG, f"{holder} {now + ttl_s:.3f}")
        except MlflowException:  # no registered model yet: no champion, nothing to contend for
            return None
        after = self._lease(client)
        return None if after is None or after[0] == holder else f"{after[0]} (took it at the same time)"

    def release_lease(self, holder: str) -> None:
        """Give the lease back if ``holder`` has it (a reconciler that stops cleanly)."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        current = self._lease(client)
        if current is not None and current[0] == holder:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model_tag(self.name, LEASE_TAG)

    def _lease(self, client: Any) -> tuple[str, float] | None:
        from mlflow.exceptions import MlflowException

        try:
            value = client.get_registered_model(self.name).tags.get(LEASE_TAG, "")
        except MlflowException:
            return None
        holder, _, until = value.rpartition(" ")
        try:
            expires = float(until)
        except ValueError:  # a hand-edited tag: nobody holds it
            return None
        # a hand-edited or far-future expiry (clocks apart by more than a day) frees it too
        if not holder or not math.isfinite(expires) or expires > time.time() + 86_400:
            return None
        return holder, expires

    def last_approved(
        self, version: str | None, *, tags_of: dict[str, dict[str, str]] | None = None, max_hops: int = 50
    ) -> str | None:
        """``version`` if the fleet approved its rollout (promoted to all edge nodes, never rolled
        back), else the newest such version before it along the ``previous_champion`` tags; None
        when there is none (the base model). ``tags_of``: every version's tags, if the caller has
        them already."""
        if version is None:
            return None
        if tags_of is None:  # one listing, not one per hop
            tags_of = {v["version"]: v["tags"] for v in self.versions()}
        seen: set[str] = set()
        while version is not None and version not in seen and len(seen) < max_hops:
            seen.add(version)
            tags = tags_of.get(str(version))
            if tags is None:  # deleted (a clean-up) or a hand-edited tag: the chain ends here
                return None
            if _approved(tags):
                return version
            version = tags.get(PREVIOUS_TAG) or None
        return None

    def previous_champion(self, version: str) -> str | None:
        return self.show(version)["tags"].get(PREVIOUS_TAG) or None

    def tag(self, version: str, key: str, value: str) -> None:
        self._client().set_model_version_tag(self.name, str(version), key, value)


def _transient(exc: BaseException) -> bool:
    """A failure an outage explains (the store or the network), not the entry itself."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    code = getattr(exc, "error_code", "")
    return code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def _later(champion: Any, r: RoundRecord, version: int) -> bool:
    """Whether ``champion`` came after round ``r`` (registered as ``version``): a later round of the
    same run (rounds, not version numbers: a retried round registers after the rounds that
    overtook it), else a version registered after it."""
    if champion.tags.get(RUN_TAG) == r.run and champion.tags.get(ROUND_TAG, "").isdigit():
        return int(champion.tags[ROUND_TAG]) > r.round
    return int(champion.version) > version


def _approved(tags: dict[str, str]) -> bool:
    """The fleet approved this version's rollout: promoted to every edge node, never rolled back."""
    return tags.get(ROLLOUT_TAG, "").startswith("promoted") and ROLLED_BACK_TAG not in tags


def model_card(r: RoundRecord) -> str:
    eps = ", ".join(f"{c}: {e:.2f}" for c, e in sorted(r.epsilon.items()))
    user = f"\n- user-level ε: {r.user_epsilon:.2f}" if r.user_epsilon is not None else ""
    return f"""# {r.run}, round {r.round}

A LoRA adapter for `{r.base_model.get("source")}`, aggregated by `{r.strategy}` from the private
updates of {", ".join(r.clients)} (DP-SGD on each node's own data; secure aggregation).

- held-out loss {r.held_out_loss:.4f}, perplexity {r.perplexity:.2f}; mean train loss {r.train_loss:.4f}
- sample-level (ε, δ) per client, composed over every round so far: {eps} (δ = {r.delta:g}){user}
- budget per client: ε = {r.budget_epsilon:g}

Load it: `mlflow.pyfunc.load_model("models:/<name>/<version>").predict(["your prompt"])`.
"""
