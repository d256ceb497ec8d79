"""The audit trail as DICOM audit messages (PS3.15 A.5, the RFC 3881-derived
XML schema of A.5.1), one `AuditMessage` document per trail line.

Which message each line becomes (A.5.3), from this server's side:

- a search (QIDO-RS) is 110112 Query: the caller issues it (Source Role ID
  110153), the server answers it (Destination, 110152); the participant
  object is the Study Root query model's SOP Class UID with the query
  string, base64, in `ParticipantObjectQuery`.
- a retrieval (WADO-RS) is 110104 DICOM Instances Transferred, action R:
  the server sends (Source), the caller receives (Destination, and it is
  the requestor).
- a store (STOW-RS) is 110104 DICOM Instances Transferred, action C: the
  caller sends (Source), the server receives (Destination).
- a rendering (rendered, thumbnails, IIIF) is 110103 DICOM Instances
  Accessed, action R: pixels are viewed, no instance leaves.
- a refused request (401/403) is 110113 Security Alert, event type 110132
  Use of Restricted Function, outcome 4, with the route as its alert
  subject (a URI); other lines are 110100 Application Activity.

Every message names the caller (its `who`, its IP address) and the server
as active participants, the server (`transcode`, an application server
process, code 4) as audit source, and each study touched (ID type 110180,
with a `ParticipantObjectDescription` of its instances by SOP Class where
the line names instances) and each patient (Patient ID, ID type 2 of
RFC-3881). Outcomes: success 0, denied 4, failure 8. The schema's A.5.1
text lists `ParticipantObjectName` or `ParticipantObjectQuery` as a choice
without `?`, while the per-message tables of A.5.3 (and RFC 3881) leave
them optional: study and patient objects carry neither here (the trail
keeps no patient names).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree import ElementTree as ET

from transcode.catalog import Catalog

#: The audit source's identifier in every message.
SOURCE_ID = "transcode"
#: Study Root Query/Retrieve Information Model - FIND: what a QIDO-RS search queries.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_SOURCE_ROLE, _DESTINATION_ROLE = ("110153", "DCM", "Source Role ID"), ("110152", "DCM", "Destination Role ID")
_EVENTS: dict[str, tuple[tuple[str, str, str], str]] = {
    "search": (("110112", "DCM", "Query"), "E"),
    "retrieve": (("110104", "DCM", "DICOM Instances Transferred"), "R"),
    "store": (("110104", "DCM", "DICOM Instances Transferred"), "C"),
    "render": (("110103", "DCM", "DICOM Instances Accessed"), "R"),
}
_OTHER = (("110100", "DCM", "Application Activity"), "E")
_ALERT = ("110113", "DCM", "Security Alert")
_RESTRICTED = ("110132", "DCM", "Use of Restricted Function")
#: (caller's role, server's role) per action: who sends and who receives.
_ROLES = {"search": (_SOURCE_ROLE, _DESTINATION_ROLE), "retrieve": (_DESTINATION_ROLE, _SOURCE_ROLE),
          "store": (_SOURCE_ROLE, _DESTINATION_ROLE)}
_OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}
_STUDY_UID = ("110180", "DCM", "Study Instance UID")
_SOP_CLASS_UID = ("110181", "DCM", "SOP Class UID")
_PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
_URI = ("12", "RFC-3881", "URI")


def audit_message(record: dict[str, Any], sop_class: Callable[[str], str | None] = lambda _: None) -> ET.Element:
    """One trail line as an `AuditMessage` element. `sop_class` gives an
    instance's SOP Class UID where it is known (the archive's index), for
    the studies' `SOPClass` descriptions (without it, `UID` is left out,
    which the schema allows)."""
    action, outcome = record.get("action", "other"), record.get("outcome", "")
    denied = outcome == "denied"
    event, action_code = (_ALERT, "E") if denied else _EVENTS.get(action, _OTHER)
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(message, "EventIdentification", EventActionCode=action_code,
                                   EventDateTime=str(record.get("time")),
                                   EventOutcomeIndicator=_OUTCOMES.get(outcome, "8"))
    _coded(identification, "EventID", event)
    if denied:
        _coded(identification, "EventTypeCode", _RESTRICTED)
    ET.SubElement(identification, "EventOutcomeDescription").text = \
        f"HTTP {record.get('status')} {record.get('method')} {record.get('route')}"
    caller_role, server_role = (None, None) if denied else _ROLES.get(action, (None, None))
    caller = ET.SubElement(message, "ActiveParticipant", UserID=str(record.get("who") or "anonymous"),
                           UserIsRequestor="true")
    if record.get("from"):
        caller.set("NetworkAccessPointID", str(record["from"]))
        caller.set("NetworkAccessPointTypeCode", "2")
    if caller_role:
        _coded(caller, "RoleIDCode", caller_role)
    server = ET.SubElement(message, "ActiveParticipant", UserID=SOURCE_ID, UserIsRequestor="false")
    if server_role:
        _coded(server, "RoleIDCode", server_role)
    source = ET.SubElement(message, "AuditSourceIdentification", AuditSourceID=SOURCE_ID)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})
    if denied:
        subject = _object(message, str(record.get("route")), "2", "13", _URI)
        ET.SubElement(subject, "ParticipantObjectDetail", type="Alert Description",
                      value=_base64(f"{record.get('method')} refused with HTTP {record.get('status')}"))
    if action == "search" and record.get("query") is not None:
        query = _object(message, STUDY_ROOT_FIND, "2", "3", _SOP_CLASS_UID)
        ET.SubElement(query, "ParticipantObjectQuery").text = _base64(record["query"])
    touched = record.get("touched", [])
    for study in dict.fromkeys(t["study"] for t in touched if t.get("study")):
        _study(message, study, [t["instance"] for t in touched if t.get("study") == study and t.get("instance")],
               sop_class)
    for patient in dict.fromkeys(t["patient"] for t in touched if t.get("patient")):
        _object(message, patient, "1", "1", _PATIENT_NUMBER)
    return message


def messages(lines: Iterable[dict[str, Any]], sop_class: Callable[[str], str | None] = lambda _: None
             ) -> Iterable[str]:
    """Each trail line as one serialized `AuditMessage` document on one line
    (the schema's root is a single message, as syslog carries them)."""
    for record in lines:
        yield ET.tostring(audit_message(record, sop_class), encoding="unicode")


def sop_classes(catalog: Catalog) -> Callable[[str], str | None]:
    """An instance's SOP Class UID from the archive's `catalog`, None for an
    instance it does not hold."""
    def lookup(sop: str) -> str | None:
        text = catalog.dicom_json(sop)
        return None if text is None else (json.loads(text).get("00080016", {}).get("Value") or [None])[0]
    return lookup


def _study(message: ET.Element, study: str, instances: list[str], sop_class: Callable[[str], str | None]) -> None:
    """A study object; with its instances grouped by SOP Class where the line names them."""
    element = _object(message, study, "2", "3", _STUDY_UID)
    if not instances:
        return
    by_class: dict[str | None, list[str]] = defaultdict(list)
    for sop in dict.fromkeys(instances):
        by_class[sop_class(sop)].append(sop)
    description = ET.SubElement(element, "ParticipantObjectDescription")
    for uid, sops in by_class.items():
        group = ET.SubElement(description, "SOPClass", NumberOfInstances=str(len(sops)))
        if uid:
            group.set("UID", uid)
        for sop in sops:
            ET.SubElement(group, "Instance", UID=sop)


def _object(message: ET.Element, identifier: str, type_code: str, role: str,
            id_type: tuple[str, str, str]) -> ET.Element:
    element = ET.SubElement(message, "ParticipantObjectIdentification", ParticipantObjectID=identifier,
                            ParticipantObjectTypeCode=type_code, ParticipantObjectTypeCodeRole=role)
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    return element


def _coded(parent: ET.Element, name: str, code: tuple[str, str, str]) -> ET.Element:
    """A CodedValueType element: csd-code, codeSystemName, originalText (the code meaning)."""
    value, scheme, meaning = code
    return ET.SubElement(parent, name, {"csd-code": value, "codeSystemName": scheme, "originalText": meaning})


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
