"""attachments (invariant 4) and boots.draining_ts (drains outside the lifecycle lock)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=512), nullable=False),
        sa.Column("attached_ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["boot_id"], ["boots.boot_id"], name=op.f("fk_attachments_boot_id_boots")
        ),
        sa.PrimaryKeyConstraint("boot_id", "workspace", name=op.f("pk_attachments")),
    )
    # Bindings made before attachments were recorded came from a successful attach
    # (`bgdeploy attach`) or a switch after the candidate attached them.
    op.execute(
        "INSERT INTO attachments (boot_id, workspace, attached_ts) "
        "SELECT boot_id, workspace, attached_ts FROM workspaces"
    )
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draining_ts", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.drop_column("draining_ts")
    op.drop_table("attachments")
