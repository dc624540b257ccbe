"""Inside a SageMaker container: the job's secret environment variables, as shell lines.

``--secret-env NAME`` values never enter a request, the store or a log: nbscale puts them
in a Secrets Manager secret of the job and only its ARN (``NBSCALE_ENV_SECRET_ARN``) is in
the training job's Environment. The entry's first stage runs this module and ``eval``\\s
its output, so the launcher and every rank get the variables; the values pass through the
shell's memory only. Exit 1 with one message when the secret cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

ENV = "NBSCALE_ENV_SECRET_ARN"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def main() -> int:
    arn = os.environ.get(ENV)
    if not arn:
        return 0
    try:
        import boto3

        region = arn.split(":")[3] if arn.count(":") >= 6 else None
        text = boto3.client("secretsmanager", region_name=region or None).get_secret_value(
            SecretId=arn
        )["SecretString"]
        values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - one line to the job's log, never the values
        print(
            f"nbscale: cannot read the job's secret environment from {arn}: "
            f"{type(exc).__name__} (the role needs secretsmanager:GetSecretValue on it)",
            file=sys.stderr,
        )
        return 1
    for name, value in values.items():
        if _NAME.match(name):
            print(f"export {name}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
