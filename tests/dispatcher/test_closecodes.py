"""One close-code table for the pod and the runner (``dispatch_protocol.closecodes``)."""

from __future__ import annotations

import re
from pathlib import Path

from dispatch_protocol import closecodes
from runner import machine, states

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_table_holds_every_code_the_protocol_document_lists() -> None:
    text = DOCS.read_text()
    section = text[text.index("## 6. Close codes") :]
    section = section[: section.index("\n## ", 1)]
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", section, re.M)}
    assert documented <= set(closecodes.CLOSE_CODES)
    assert set(closecodes.CLOSE_CODES) - documented == {closecodes.ABNORMAL}  # never sent


def test_pod_and_runner_read_their_codes_from_the_one_table() -> None:
    assert states.POLICY_VIOLATION == closecodes.POLICY_VIOLATION == 1008
    assert machine.SUPERSEDED_CLOSE_CODE == closecodes.SUPERSEDED == 4002
    assert {closecodes.INVALID, closecodes.TOO_BIG} == machine.REJECTED_CLOSE_CODES
