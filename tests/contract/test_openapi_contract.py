"""The OpenAPI schema describes the API exactly: schemathesis (``--checks all``: status codes, content types, response
bodies, and both directions of validation — schema-valid requests accepted, schema-violating ones refused) against
the live front end over a real Triton (tiny models), with 0 failures.

``schemathesis.toml`` beside this file holds the one thing the schema cannot say (uploads are validated by content).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stack.processes import FrontendProcess
from tests.conftest import EXAMPLES

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(triton_server, tmp_path):
    env = {"EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "EMOSERVE_HALLO2__DATA_DIR": str(tmp_path / "tasks"),
           "EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS": json.dumps([str(EXAMPLES)]), "EMOSERVE_HALLO2__INFERENCE_STEPS": "1"}
    frontend = FrontendProcess(triton_server.grpc_url, env).start()
    try:
        st = Path(sys.executable).with_name("st")
        run = subprocess.run(
            [str(st), "--config-file", str(CONFIG), "run", f"{frontend.base_url}/openapi.json", "--checks", "all",
             "--max-examples", "10", "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        frontend.stop()
    report = run.stdout[-6000:]
    assert run.returncode == 0, report
    assert " passed" in report and "failures" not in report.split("SUMMARY")[-1].lower(), report
