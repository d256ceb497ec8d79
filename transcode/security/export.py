"""The audit trail as FHIR R4 AuditEvent resources (a `collection` Bundle).

Event types come from DICOM's vocabulary (DCM, PS3.16), as the DICOM audit
messages of PS3.15 A.5 use them: a search is 110112 Query, a retrieval or a
rendering 110103 DICOM Instances Accessed, a STOW-RS 110104 DICOM Instances
Transferred, a refused request 110113 Security Alert. Entities: each study
(by its UID) and its patient (by Patient ID); a search carries its query.
The DICOM audit message XML (PS3.15 A.5) is written by `dicom_audit`, whose
event choice differs in one place: there a WADO-RS retrieval is 110104
DICOM Instances Transferred (the instances leave the server, A.5.3.4).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
_TYPES = {"search": ("110112", "Query"), "retrieve": ("110103", "DICOM Instances Accessed"),
          "render": ("110103", "DICOM Instances Accessed"), "store": ("110104", "DICOM Instances Transferred")}
_ACTIONS = {"search": "E", "retrieve": "R", "render": "R", "store": "C"}
_OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def audit_event(record: dict[str, Any]) -> dict[str, Any]:
    """One trail line as a FHIR R4 AuditEvent."""
    action = record.get("action", "other")
    code, display = ("110113", "Security Alert") if record.get("outcome") == "denied" else \
        _TYPES.get(action, ("110100", "Application Activity"))
    entities: list[dict[str, Any]] = []
    patients = []
    for touched in record.get("touched", []):
        if touched.get("study"):
            entities.append({"what": {"identifier": {"system": "urn:dicom:uid",
                                                     "value": f"urn:oid:{touched['study']}"}},
                             "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                             "role": {"system": _ENTITY_ROLE, "code": "3", "display": "Report"},
                             "detail": [{"type": k, "valueString": touched[k]}
                                        for k in ("series", "instance") if touched.get(k)]})
        if touched.get("patient") and touched["patient"] not in patients:
            patients.append(touched["patient"])
    entities += [{"what": {"identifier": {"value": p}}, "type": {"system": _ENTITY_TYPE, "code": "1",
                                                                  "display": "Person"},
                  "role": {"system": _ENTITY_ROLE, "code": "1", "display": "Patient"}} for p in patients]
    if record.get("query"):
        entities.append({"type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "role": {"system": _ENTITY_ROLE, "code": "24", "display": "Query"},
                         "query": base64.b64encode(record["query"].encode()).decode()})
    return {
        "resourceType": "AuditEvent",
        "id": f"seq-{record.get('seq')}",
        "type": {"system": DCM, "code": code, "display": display},
        "action": _ACTIONS.get(action, "E"),
        "recorded": record.get("time"),
        "outcome": _OUTCOMES.get(record.get("outcome", ""), "8"),
        "outcomeDesc": f"HTTP {record.get('status')} {record.get('method')} {record.get('route')}",
        "agent": [{"who": {"display": record.get("who")}, "requestor": True,
                   "network": {"address": record.get("from"), "type": "2"}}],
        "source": {"observer": {"display": "transcode"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": entities,
    }


def bundle(lines: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Trail lines as one FHIR Bundle of type collection."""
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": audit_event(record)} for record in lines]}
