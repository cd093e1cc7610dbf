"""replicas: a boot is a set of N daemon processes; each replica's port, process and
state, the ports in rotation on the boot, and the count `bgdeploy scale` asked for

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_create_time", sa.Double(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_ts", sa.DateTime(), nullable=False),
        sa.Column("stopped_ts", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("exits", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_ts", sa.DateTime(), nullable=True),
        sa.Column("fails", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(
            ["boot_id"], ["boots.boot_id"], name=op.f("fk_replicas_boot_id_boots")
        ),
        sa.PrimaryKeyConstraint("boot_id", "replica", name=op.f("pk_replicas")),
    )
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replicas", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("ports", sa.Text(), nullable=True))
    with op.batch_alter_table("intents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replicas", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("intents", schema=None) as batch_op:
        batch_op.drop_column("replicas")
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.drop_column("ports")
        batch_op.drop_column("replicas")
    op.drop_table("replicas")
