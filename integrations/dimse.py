"""DIMSE with pynetdicom: a C-STORE SCP that spools what a modality or PACS sends, C-ECHO, and a C-STORE SCU.

The SCP's handler only checks the caller and writes the instance to the spool (``<spool>/<study>/<sop>.dcm``,
written to a temporary name and renamed, so a reader never sees half a file); drafting happens later, in the
worker. Allowed callers, AE titles, ports and timeouts come from settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from radlvlm.errors import InputError
from radlvlm.integrations.dicomweb import PacsError

logger = logging.getLogger(__name__)

# C-STORE status codes (PS3.4 Annex B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_REFUSED_NOT_AUTHORISED = 0x0124  # "Refused: Not Authorized" (PS3.7 C.4.2.1.4 general status)
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class ListenerSettings:
    """Args:
    ae_title (str, default "RADLVLM"): our AE title.
    host (str, default "127.0.0.1"), port (int, default 11112): where to listen.
    spool (Path): where received instances go.
    allowed_callers (tuple[str, ...]): calling AE titles accepted; empty accepts any (say so in the logs).
    require_called_ae (bool, default True): refuse associations addressed to another AE title.
    network_timeout_s (float, default 30).
    """

    spool: Path
    ae_title: str = "RADLVLM"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_callers: tuple[str, ...] = ()
    require_called_ae: bool = True
    network_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title) <= 16:
            raise InputError("an AE title is 1 to 16 characters")


@dataclass
class ListenerCounts:
    received: int = 0
    refused: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


def _store_handler(event: Any, settings: ListenerSettings, counts: ListenerCounts) -> int:
    """EVT_C_STORE: accept from allowed callers, spool the instance atomically, answer at once."""
    caller = event.assoc.requestor.ae_title.strip()
    if settings.allowed_callers and caller not in settings.allowed_callers:
        counts.refused += 1
        logger.warning("C-STORE refused: calling AE title not in the allowed list")
        return STATUS_REFUSED_NOT_AUTHORISED
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        study = str(ds.StudyInstanceUID)
        sop = str(ds.SOPInstanceUID)
        if not study or not sop or any(not part.isdigit() for part in (study + "." + sop).split(".")):
            counts.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        folder = settings.spool / study
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{sop}.partial"
        ds.save_as(temporary, enforce_file_format=True)
        os.replace(temporary, folder / f"{sop}.dcm")
    except OSError:
        counts.failed += 1
        return STATUS_OUT_OF_RESOURCES
    except Exception as e:  # a dataset pynetdicom could not decode; the sender is told, we keep serving
        counts.failed += 1
        logger.warning("C-STORE could not be spooled (%s)", type(e).__name__)
        return STATUS_CANNOT_UNDERSTAND
    counts.received += 1
    counts.studies.add(study)
    return STATUS_SUCCESS


def start_listener(settings: ListenerSettings, *, block: bool = False) -> tuple[Any, ListenerCounts]:
    """Start the C-STORE/C-ECHO SCP; returns (server, counts). ``server.shutdown()`` stops it."""
    settings.spool.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=settings.ae_title)
    ae.network_timeout = settings.network_timeout_s
    ae.require_called_aet = settings.require_called_ae
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    counts = ListenerCounts()
    if not settings.allowed_callers:
        logger.warning("the listener accepts any calling AE title (no allowed_callers configured)")
    handlers = [(evt.EVT_C_STORE, _store_handler, [settings, counts])]
    server = ae.start_server((settings.host, settings.port), block=block, evt_handlers=handlers)
    return server, counts


def send_instances(
    datasets: Sequence[Dataset], *, host: str, port: int, called_ae: str, calling_ae: str = "RADLVLM"
) -> list[int]:
    """C-STORE SCU: send ``datasets`` to a peer; returns the status of each. Raises PacsError when unreachable."""
    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        syntax = ds.file_meta.TransferSyntaxUID if getattr(ds, "file_meta", None) else None
        ae.add_requested_context(ds.SOPClassUID, [syntax] if syntax else None)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise PacsError(f"no DICOM association with {called_ae} (rejected, aborted or unreachable)")
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def echo(*, host: str, port: int, called_ae: str, calling_ae: str = "RADLVLM") -> bool:
    """C-ECHO: True when the peer answers with success."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == STATUS_SUCCESS
    finally:
        assoc.release()
