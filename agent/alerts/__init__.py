"""Email and webhook alerts (docs/alerts.md).

``triggers`` (pure) decides what is alert-worthy; ``message`` (pure) builds the email and webhook
payloads; ``outbox`` stores every message before sending it and retries until it is delivered;
``smtp`` and ``webhook`` are the transports; ``cycle`` ties them to a run of the agent.
"""

from agent.alerts import outbox
from agent.alerts.cycle import Outcome, after_run, retry, send_test

__all__ = ["Outcome", "after_run", "outbox", "retry", "send_test"]
