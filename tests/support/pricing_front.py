"""A local AWS Price List Query API (``pricing``) front for tests, on 127.0.0.1 only.

It speaks the service's protocol as botocore's model describes it (JSON 1.1, target
prefix ``AWSPriceListService``) and answers ``GetProducts`` from a catalog of products in
the documented price list shape
(https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html,
https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/reading-an-offer.html): each
entry of ``PriceList`` is a JSON *string* holding ``product`` (sku, productFamily,
attributes), ``serviceCode``, ``terms`` (``OnDemand`` offers with ``priceDimensions``,
``pricePerUnit.USD`` per ``Hrs``), ``version`` and ``publicationDate``. Filters are
applied as the service documents (``TERM_MATCH``: an attribute, ``productFamily`` or
``serviceCode`` equals the value), pages are ``MaxResults`` long (default 100) with an
opaque ``NextToken``. Errors use the service's error codes (``InvalidParameterException``,
``NotFoundException``). ``broken`` makes it answer a PriceList entry that is not JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REGIONS = {"us-east-1": "USE1", "eu-west-1": "EU", "eu-central-1": "EUC1", "ap-south-1": "APS3"}
LOCATIONS = {
    "us-east-1": "US East (N. Virginia)",
    "eu-west-1": "EU (Ireland)",
    "eu-central-1": "EU (Frankfurt)",
    "ap-south-1": "Asia Pacific (Mumbai)",
}
COMPONENTS = {"Train": "Training", "Host": "Hosting", "Processing": "Processing"}


def product(region: str, use: str, instance: str, usd: str, unit: str = "Hrs") -> dict[str, Any]:
    """One SageMaker instance product as the price list holds it."""
    usage = f"{REGIONS[region]}-{use}:{instance}"
    sku = hashlib.sha1(usage.encode()).hexdigest()[:16].upper()  # noqa: S324 - an id
    term = f"{sku}.JRTCKXETXF"
    return {
        "product": {
            "productFamily": "ML Instance",
            "attributes": {
                "servicecode": "AmazonSageMaker",
                "servicename": "Amazon SageMaker",
                "location": LOCATIONS[region],
                "locationType": "AWS Region",
                "regionCode": region,
                "instanceName": instance,
                "instanceType": instance,
                "component": COMPONENTS.get(use, use),
                "usagetype": usage,
                "operation": "RunInstance",
            },
            "sku": sku,
        },
        "serviceCode": "AmazonSageMaker",
        "terms": {
            "OnDemand": {
                term: {
                    "priceDimensions": {
                        f"{term}.6YS6EN2CT7": {
                            "unit": unit,
                            "endRange": "Inf",
                            "description": f"${usd} per {instance} hour",
                            "appliesTo": [],
                            "rateCode": f"{term}.6YS6EN2CT7",
                            "beginRange": "0",
                            "pricePerUnit": {"USD": usd},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {},
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    }


class PricingFront:
    def __init__(self, catalog: list[dict[str, Any]] | None = None) -> None:
        self.catalog = list(catalog or [])
        self.broken = False
        self.calls: list[dict[str, Any]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                status, answer = front.answer(target, json.loads(body or b"{}"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _error(code: str, message: str) -> tuple[int, dict[str, Any]]:
        return 400, {"__type": code, "Message": message}

    def answer(self, target: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        operation = target.partition(".")[2]
        self.calls.append({"operation": operation, **request})
        if target.partition(".")[0] != "AWSPriceListService" or operation != "GetProducts":
            return self._error("InvalidParameterException", f"unsupported target {target}")
        service = request.get("ServiceCode")
        if not service:
            return self._error("InvalidParameterException", "ServiceCode is required")
        if service not in {p["serviceCode"] for p in self.catalog} | {"AmazonSageMaker"}:
            return self._error("NotFoundException", f"no service {service}")
        matched = [p for p in self.catalog if p["serviceCode"] == service]
        for f in request.get("Filters") or []:
            if f.get("Type") != "TERM_MATCH":
                return self._error("InvalidParameterException", "unsupported filter type")
            field, value = f.get("Field"), f.get("Value")
            matched = [
                p
                for p in matched
                if {
                    **p["product"]["attributes"],
                    "productFamily": p["product"]["productFamily"],
                    "sku": p["product"]["sku"],
                }.get(field)
                == value
            ]
        size = int(request.get("MaxResults") or 100)
        start = 0
        if request.get("NextToken"):
            try:
                start = int(base64.b64decode(request["NextToken"]).decode())
            except ValueError:
                return self._error("InvalidNextTokenException", "the token is not valid")
        page = matched[start : start + size]
        listing = ["{not json" if self.broken else json.dumps(p) for p in page]
        answer: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": listing}
        if start + size < len(matched):
            answer["NextToken"] = base64.b64encode(str(start + size).encode()).decode()
        return 200, answer
