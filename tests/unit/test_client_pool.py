"""Asking the clients at once: a reply of the wrong phase is that client's failure, not the caller's.

The sessions here are plain objects with ``call``/``close`` (what ClientPool needs of one); the real
Ray Train sessions are tests/integration/test_train_jobs.py's and test_federation_ray.py's.
"""

from edgefleet.federation.client_pool import ClientPool
from edgefleet.federation.messages import Keys, Plan, PlanRequest
from edgefleet.federation.secagg import SecAggClient
from edgefleet.train.accounting import Release
from edgefleet.train.dp import DEFAULT_HYPER


class ScriptedSession:
    def __init__(self, reply):
        self.reply = reply

    def call(self, request, timeout_s):
        return self.reply

    def close(self, timeout_s=0):
        pass


def test_a_reply_of_another_phase_drops_that_client_and_the_others_answer():
    # Prepare: edge-2 answers a plan request with keys (a confused or lying client)
    plan = Plan(Release(1.0, 0.1, 10))
    keys = Keys(SecAggClient("edge-2", round_tag=b"r").advertise())
    pool = ClientPool(lambda node: ScriptedSession(keys if node == "edge-2" else plan))

    # Execute
    replies, failed = pool.ask(["edge-1", "edge-2", "edge-3"], lambda c: PlanRequest(DEFAULT_HYPER), timeout_s=1)

    # Assert
    assert replies == {"edge-1": plan, "edge-3": plan}
    assert list(failed) == ["edge-2"]
    assert "answered PlanRequest with Keys, not Plan" in failed["edge-2"]
