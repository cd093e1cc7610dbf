"""desired state: one intent row per service (pins, operator rollback, down), and the
configuration digest the running router loaded

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "intents",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("run", sa.String(length=8), nullable=False),
        sa.Column("run_ts", sa.DateTime(), nullable=True),
        sa.Column("run_by", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("mode_ts", sa.DateTime(), nullable=True),
        sa.Column("mode_by", sa.Text(), nullable=True),
        sa.Column("installed_seen", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_intents")),
    )
    with op.batch_alter_table("routers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routers", schema=None) as batch_op:
        batch_op.drop_column("config_digest")
    op.drop_table("intents")
