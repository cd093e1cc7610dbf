"""crash recovery: the router holds requests while a dead active boot is replaced,
and the crash-loop backoff

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("healing_ts", sa.DateTime()),
    ("healing_hold_s", sa.Double()),
    ("crash_exits", sa.Integer()),
    ("crash_since_ts", sa.DateTime()),
    ("crash_next_ts", sa.DateTime()),
    ("crash_log_tail", sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
