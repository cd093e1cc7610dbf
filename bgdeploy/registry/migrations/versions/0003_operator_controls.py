"""operator controls: held deploys, pause, maintenance

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("held_ts", sa.DateTime()),
    ("paused_ts", sa.DateTime()),
    ("pause_max_s", sa.Double()),
    ("maintenance_ts", sa.DateTime()),
    ("maintenance_message", sa.Text()),
    ("maintenance_retry_after", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
