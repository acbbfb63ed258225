"""Cloud-side distillation on the session fleet: a DeepSpeed ZeRO-2 job on the cloud node, 2 workers
(gloo), tiny teacher and student. The student's KL divergence to the teacher must fall."""

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from edgefleet.config import ModelSpec  # noqa: E402
from edgefleet.platform.topology import ROLE_LABEL  # noqa: E402
from edgefleet.train.distill import kl_distillation_loss, public_corpus, run_distillation  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_public_corpus_is_stdlib_docstrings_not_client_data():
    from edgefleet.train.data import demo_topics

    corpus = public_corpus()
    client_text = set(demo_topics().values())
    assert len(corpus) > 100 and not client_text.intersection(corpus)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    import torch

    logits = torch.randn(2, 5, 11)

    assert float(kl_distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_distillation_loss(logits, torch.randn(2, 5, 11))) > 0


def test_the_student_moves_towards_the_teacher_on_the_cloud_node(fleet, fleet_config, tmp_path):
    cfg = fleet_config.model_copy(update={"cache_dir": tmp_path})

    result = run_distillation(
        cfg,
        teacher=ModelSpec(source="tiny:1", quantization="none"),
        student=ModelSpec(source="tiny:0", quantization="none"),
        steps=24,
        lr=1e-2,
        batch_size=8,
        block_size=32,
        workers=2,
    )

    labels = next(n.get("Labels") or {} for n in ray.nodes() if n["NodeID"] == result.ran_on)
    first, last = sum(result.kl[:4]) / 4, sum(result.kl[-4:]) / 4
    print(f"KL(teacher ‖ student): {first:.3f} → {last:.3f} over {len(result.kl)} steps, job {result.wall_s:.1f} s")
    assert labels[ROLE_LABEL] == "cloud"
    assert last < 0.8 * first, result.kl
    assert result.student_state and all(k.startswith(("model.", "lm_head")) for k in result.student_state)
