"""Workspace bindings and the attach calls behind them (invariant 4).

A workspace is bound to a boot only when that boot has an attachment for it: a
recorded, successful attach call. ``bind`` checks that and the active boot in the
same write transaction as the binding, and a switch or rollback checks every
binding it moves (``unattached``) in its own; both open with ``BEGIN IMMEDIATE``,
so one of them always sees the other's commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from bgdeploy.registry.models import Attachment, Workspace, utcnow

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry


def unattached(s: Session, service: str, boot_id: str) -> list[str]:
    """The service's bound workspaces that boot_id has not attached, by name."""
    attached = exists().where(
        Attachment.boot_id == boot_id, Attachment.workspace == Workspace.workspace
    )
    return list(
        s.scalars(
            select(Workspace.workspace)
            .where(Workspace.service == service, ~attached)
            .order_by(Workspace.workspace)
        )
    )


def _record(s: Session, boot_id: str, workspace: str) -> None:
    if s.get(Attachment, (boot_id, workspace)) is None:
        s.add(Attachment(boot_id=boot_id, workspace=workspace, attached_ts=utcnow()))


class WorkspaceRecords:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def record_attach(self, boot_id: str, workspace: str) -> None:
        """Boot ``boot_id`` answered its attach call for ``workspace`` with 2xx."""
        with self.registry.writing() as s:
            _record(s, boot_id, workspace)

    def unattached(self, service: str, boot_id: str) -> list[str]:
        with self.registry.reading() as s:
            return unattached(s, service, boot_id)

    def bind(self, service: str, workspace: str, boot_id: str) -> bool:
        """Record that boot_id attached workspace and, if it is still the active boot,
        bind the workspace to it. False (binding untouched) when the active boot changed."""
        with self.registry.writing() as s:
            _record(s, boot_id, workspace)
            # locked against transitions until this unit of work ends (PostgreSQL)
            row = self.registry.locked_deployment(s, service)
            if row.active_boot_id != boot_id:
                return False
            ws = s.get(Workspace, (service, workspace))
            if ws is None:
                s.add(
                    Workspace(
                        service=service, workspace=workspace, boot_id=boot_id, attached_ts=utcnow()
                    )
                )
            else:
                ws.boot_id, ws.attached_ts = boot_id, utcnow()
            return True

    def unbind(self, service: str, workspace: str) -> bool:
        """Remove a binding; False when there was none. Attachments stay: they are true."""
        with self.registry.writing() as s:
            ws = s.get(Workspace, (service, workspace))
            if ws is None:
                return False
            s.delete(ws)
            return True

    def bindings(self, service: str) -> dict[str, str]:
        """workspace -> the boot it is bound to."""
        with self.registry.reading() as s:
            rows = s.execute(
                select(Workspace.workspace, Workspace.boot_id).where(Workspace.service == service)
            )
            return {name: boot_id for name, boot_id in rows}
