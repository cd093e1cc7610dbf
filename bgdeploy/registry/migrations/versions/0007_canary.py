"""canary steps: the share of new requests a candidate held at ready gets, and where
the steps stand

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("canary_weight", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("canary_steps", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("canary_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("canary_step_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("canary_step_ts", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name in ("canary_step_ts", "canary_step_s", "canary_step", "canary_steps"):
            batch_op.drop_column(name)
        batch_op.drop_column("canary_weight")
