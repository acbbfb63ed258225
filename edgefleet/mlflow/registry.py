"""Every federated round's global model, versioned in the MLflow model registry with its lineage.

- **Tracking.** A federated run is one MLflow run (experiment ``edgefleet-federation``): its params
  (strategy, clients, DP settings, base model), per-round metrics (train loss, held-out loss and
  perplexity, ε per client, the largest ε) and per-round artifacts (the adapter in peft format and
  a model card).
- **Registry.** Each round's adapter is registered as a new version of ``mlflow.model_name`` as a
  pyfunc that generates text (:mod:`pyfunc_model`), tagged with its lineage: run, round, strategy,
  participating clients (the nodes whose data contributed), (ε, δ), the parent version and the base
  model. It gets the alias ``candidate``. Aliases, never the deprecated stages.
- **Promotion gate** (:func:`gate`, pure): ``champion`` moves to the candidate only if every client
  is within its privacy budget and it is better for users: its task score (``eval/scores.py``)
  beats the champion's (the base model's, for the first version) by ``task_margin``, its divergence
  from the base on general chat stays within ``max_divergence`` and it still answers every fact the
  base answers. Without held-out questions, the held-out loss must beat the champion's by
  ``margin``. The decision, its reason and the scores are tags on the version.
- **Outbox.** If the tracking server does not answer when a round ends, the round goes to a local
  outbox and is published, in order, the next time the server answers. Nothing is lost.

The embedded default is a SQLite store with a local artifact folder; ``mlflow.tracking_uri`` points
at a real ``mlflow server`` instead, through the same code.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.eval.scores import SiteScore

EXPERIMENT = "edgefleet-federation"
CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class UserScores:
    """A version's scores for users (see ``eval/scores.py``), as the gate weighs them."""

    task_score: float
    divergence: float
    facts_lost: tuple[str, ...] = ()
    answer_match: float | None = None  # reported, not gated: greedy answers are noisier than the task score
    per_site: tuple[SiteScore, ...] = ()


def gate(
    candidate_loss: float,
    champion_loss: float | None,
    *,
    margin: float,
    within_budget: bool,
    scores: UserScores | None = None,
    to_beat: float | None = None,
    task_margin: float = 0.0,
    max_divergence: float = math.inf,
) -> GateDecision:
    """Whether a candidate becomes champion.

    With ``scores``: its task score must beat ``to_beat`` (the champion's, else the base model's) by
    ``task_margin``, and the regression guard must hold. Without: held-out loss, better by ``margin``.
    Nobody may be over budget either way.
    """
    if not within_budget:
        return GateDecision(False, "a client is over its privacy budget")
    if scores is not None:
        return _gate_on_users(scores, to_beat, task_margin, max_divergence)
    if not math.isfinite(candidate_loss):
        return GateDecision(False, f"held-out loss is {candidate_loss}")
    if champion_loss is None:
        return GateDecision(True, f"first version: held-out loss {candidate_loss:.4f}")
    if candidate_loss <= champion_loss - margin:
        return GateDecision(
            True, f"held-out loss {candidate_loss:.4f} beats champion {champion_loss:.4f} by ≥ {margin:g}"
        )
    return GateDecision(
        False, f"held-out loss {candidate_loss:.4f} does not beat champion {champion_loss:.4f} by {margin:g}"
    )


def _gate_on_users(s: UserScores, to_beat: float | None, task_margin: float, max_divergence: float) -> GateDecision:
    if not math.isfinite(s.task_score):
        return GateDecision(False, f"task score is {s.task_score}")
    if s.facts_lost:
        return GateDecision(False, f"regression: no longer answers {'; '.join(s.facts_lost)!r}")
    if not s.divergence <= max_divergence:
        return GateDecision(
            False, f"regression: divergence from the base on general chat {s.divergence:.4f} > {max_divergence:g}"
        )
    if to_beat is None:
        return GateDecision(True, f"first version: task score {s.task_score:.4f}")
    if s.task_score >= to_beat + task_margin:
        return GateDecision(True, f"task score {s.task_score:.4f} beats {to_beat:.4f} by ≥ {task_margin:g}; guard held")
    return GateDecision(False, f"task score {s.task_score:.4f} does not beat {to_beat:.4f} by {task_margin:g}")


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


class TrackingUnavailable(EdgefleetError, RuntimeError):
    """The tracking server did not answer."""


class ModelRegistry:
    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        outbox: str | Path,
        margin: float = 0.0,
        task_margin: float = 0.0,
        max_divergence: float = math.inf,
    ) -> None:
        self.uri, self.name, self.margin = tracking_uri, model_name, margin
        self.task_margin, self.max_divergence = task_margin, max_divergence
        self.outbox = Path(outbox)

    @classmethod
    def from_config(cls, cfg: Any) -> ModelRegistry:
        """The registry ``cfg.mlflow`` names, with the outbox in the cache."""
        return cls(
            cfg.tracking_uri,
            cfg.mlflow.model_name,
            outbox=cfg.cache_dir / "mlflow" / "outbox",
            margin=cfg.mlflow.promotion_margin,
            task_margin=cfg.mlflow.task_margin,
            max_divergence=cfg.mlflow.max_divergence,
        )

    # ------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        import mlflow
        from mlflow import MlflowClient

        if self.uri.startswith(("http://", "https://")):
            try:
                urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=3).read()
            except OSError as exc:
                raise TrackingUnavailable(f"{self.uri}: {exc}") from None
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # ------------------------------------------------------------ publishing rounds

    def publish(self, record: RoundRecord, adapter_dir: Path) -> str | None:
        """Register ``record``'s model (and anything waiting in the outbox first, in order).

        Returns the new version, or None if the server is unreachable (the round waits in the outbox).
        """
        self._enqueue(record, adapter_dir)
        try:
            return self.flush()
        except TrackingUnavailable:
            return None

    def flush(self) -> str | None:
        """Publish every round waiting in the outbox, oldest first; the last version published."""
        last = None
        for entry in sorted(self.outbox.glob("*/record.json")):
            record = RoundRecord(**json.loads(entry.read_text()))
            last = self._publish(record, entry.parent / "adapter")
            shutil.rmtree(entry.parent)
        return last

    def pending(self) -> list[str]:
        return sorted(p.parent.name for p in self.outbox.glob("*/record.json"))

    def _enqueue(self, record: RoundRecord, adapter_dir: Path) -> None:
        # Names sort in publication order: by time first, so rounds of several runs keep their order.
        folder = self.outbox / f"{time.time_ns():020d}-{record.run}-round-{record.round:05d}"
        if any(p.name.endswith(f"-{record.run}-round-{record.round:05d}") for p in self.outbox.glob("*")):
            return  # already waiting (a coordinator publishing a round again after a restart)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.copytree(adapter_dir, tmp / "adapter")
        (tmp / "record.json").write_text(json.dumps(asdict(record), sort_keys=True))
        tmp.rename(folder)

    def _publish(self, r: RoundRecord, adapter_dir: Path) -> str:
        import mlflow

        import edgefleet
        from edgefleet.mlflow import pyfunc_model

        client = self._client()
        existing = client.search_model_versions(
            f"name = '{self.name}' and tag.`edgefleet.run` = '{r.run}' and tag.`edgefleet.round` = '{r.round}'"
        )
        if existing:  # published before a restart: once is enough
            return str(existing[0].version)
        run_id = self._run_id(client, r)
        step = r.round
        metrics = {
            "train_loss": r.train_loss,
            "held_out_loss": r.held_out_loss,
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
        with mlflow.start_run(run_id=run_id):
            card = adapter_dir.parent / "MODEL_CARD.md"
            card.write_text(model_card(r))
            mlflow.log_artifacts(str(adapter_dir), artifact_path=f"round-{r.round}/adapter")
            mlflow.log_artifact(str(card), artifact_path=f"round-{r.round}")
            table = f"round-{r.round}/evaluation.json"
            logged = {f.path for f in client.list_artifacts(run_id, f"round-{r.round}")}
            # the UI's artifact view shows it as a table; log_table appends, so a retried publish skips it
            if scores is not None and scores.per_site and table not in logged:
                mlflow.log_table(
                    {
                        "site": [s.site for s in scores.per_site],
                        "held-out questions": [s.questions for s in scores.per_site],
                        "task score": [s.task_score for s in scores.per_site],
                        "answers right": [s.answer_match for s in scores.per_site],
                    },
                    artifact_file=table,
                )
            spec = adapter_dir.parent / "base_model.json"
            spec.write_text(json.dumps(r.base_model))
            info = mlflow.pyfunc.log_model(
                name=f"round-{r.round}",
                python_model=pyfunc_model.EdgefleetLLM(),
                artifacts={"adapter": str(adapter_dir), "spec": str(spec)},
                code_paths=[str(Path(edgefleet.__file__).parent)],  # the code that loads it travels with it
                pip_requirements=pyfunc_model.requirements(),
                signature=pyfunc_model.signature(),
                registered_model_name=self.name,
                await_registration_for=60,
            )
        for key, value in metrics.items():  # the round's metrics, linked to the model it logged
            if value is not None and math.isfinite(value):
                client.log_metric(run_id, key, value, step=step, model_id=info.model_id)
        version = str(info.registered_model_version)
        parent = self._parent(client, r)
        tags = {
            "edgefleet.run": r.run,
            "edgefleet.round": str(r.round),
            "edgefleet.strategy": r.strategy,
            "edgefleet.clients": ",".join(r.clients),
            "edgefleet.data_lineage": ",".join(r.clients),
            "edgefleet.epsilon_max": f"{max(r.epsilon.values(), default=0.0):.4f}",
            "edgefleet.epsilon": json.dumps({c: round(e, 4) for c, e in r.epsilon.items()}),
            "edgefleet.delta": f"{r.delta:g}",
            "edgefleet.parent_version": parent or "",
            "edgefleet.base_model": r.base_model.get("source", ""),
            "edgefleet.held_out_loss": f"{r.held_out_loss:.6f}",
            "edgefleet.mlflow_run_id": run_id,
        }
        if r.user_epsilon is not None:
            tags["edgefleet.user_epsilon"] = f"{r.user_epsilon:.4f}"
        if scores is not None:
            tags["edgefleet.task_score"] = f"{scores.task_score:.6f}"
            tags["edgefleet.divergence"] = f"{scores.divergence:.6f}"
            tags["edgefleet.facts_lost"] = json.dumps(list(scores.facts_lost))
            if scores.answer_match is not None and math.isfinite(scores.answer_match):
                tags["edgefleet.answer_match"] = f"{scores.answer_match:.4f}"
        for key, value in tags.items():
            client.set_model_version_tag(self.name, version, key, value)
        client.set_registered_model_alias(self.name, CANDIDATE, version)
        champion = self._champion(client)
        champion_loss = float(champion.tags["edgefleet.held_out_loss"]) if champion else None
        to_beat = r.base_task_score
        if champion is not None and "edgefleet.task_score" in champion.tags:
            to_beat = float(champion.tags["edgefleet.task_score"])
        decision = gate(
            r.held_out_loss,
            champion_loss,
            margin=self.margin,
            within_budget=all(e <= r.budget_epsilon for e in r.epsilon.values()),
            scores=scores,
            to_beat=to_beat,
            task_margin=self.task_margin,
            max_divergence=self.max_divergence,
        )
        client.set_model_version_tag(self.name, version, "edgefleet.gate", "promoted" if decision.promote else "held")
        client.set_model_version_tag(self.name, version, "edgefleet.gate_reason", decision.reason)
        if decision.promote:
            if champion is not None:
                client.set_model_version_tag(self.name, version, "edgefleet.previous_champion", str(champion.version))
            client.set_registered_model_alias(self.name, CHAMPION, version)
        return version

    def _run_id(self, client: Any, r: RoundRecord) -> str:
        import mlflow

        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(EXPERIMENT, artifact_location=self._artifact_location())
        )
        runs = client.search_runs([experiment_id], f"tags.`edgefleet.run` = '{r.run}'", max_results=1)
        if runs:
            return runs[0].info.run_id
        # mlflow.start_run, not client.create_run: the run carries MLflow's system tags (user, source, git)
        with mlflow.start_run(experiment_id=experiment_id, run_name=r.run, tags={"edgefleet.run": r.run}) as run:
            mlflow.log_params(r.params)
        return run.info.run_id

    def _artifact_location(self) -> str | None:
        """Beside a SQLite store (MLflow would use ./mlruns of whatever directory the command ran
        in); a tracking server decides for itself."""
        if not self.uri.startswith("sqlite:///"):
            return None
        return (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()

    def _parent(self, client: Any, r: RoundRecord) -> str | None:
        if r.round > 1:
            prev = client.search_model_versions(
                f"name = '{self.name}' and tag.`edgefleet.run` = '{r.run}' and tag.`edgefleet.round` = '{r.round - 1}'"
            )
            if prev:
                return prev[0].version
        champion = self._champion(client)
        return str(champion.version) if champion else None

    def _champion(self, client: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return client.get_model_version_by_alias(self.name, CHAMPION)
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
            client.set_model_version_tag(self.name, str(version), "edgefleet.previous_champion", str(champion.version))
        client.set_registered_model_alias(self.name, CHAMPION, str(version))
        client.set_model_version_tag(self.name, str(version), "edgefleet.gate_reason", reason)

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
        previous = champion.tags.get("edgefleet.previous_champion")
        if not previous:
            raise KeyError(f"{self.name} v{champion.version} replaced no earlier champion: nothing to roll back to")
        client.set_registered_model_alias(self.name, CHAMPION, previous)
        client.set_model_version_tag(self.name, str(champion.version), "edgefleet.rolled_back", reason)
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

    def previous_champion(self, version: str) -> str | None:
        return self.show(version)["tags"].get("edgefleet.previous_champion") or None

    def tag(self, version: str, key: str, value: str) -> None:
        self._client().set_model_version_tag(self.name, str(version), key, value)


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
