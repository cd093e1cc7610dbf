"""initial registry schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "boots",
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_create_time", sa.Double(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_ts", sa.DateTime(), nullable=False),
        sa.Column("stopped_ts", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("boot_id", name=op.f("pk_boots")),
    )
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boots_service"), ["service"], unique=False)
        batch_op.create_index(
            "uq_boots_one_active_per_service",
            ["service"],
            unique=True,
            sqlite_where=sa.text("state = 'active'"),
            postgresql_where=sa.text("state = 'active'"),
        )

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("active_boot_id", sa.String(length=64), nullable=True),
        sa.Column("candidate_boot_id", sa.String(length=64), nullable=True),
        sa.Column("old_boot_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor_pid", sa.Integer(), nullable=True),
        sa.Column("actor_command", sa.Text(), nullable=True),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_service"), ["service"], unique=False)
        batch_op.create_index(
            "uq_events_once_per_generation",
            ["service", "generation", "event"],
            unique=True,
            sqlite_where=sa.text("event IN ('switch', 'rollback')"),
            postgresql_where=sa.text("event IN ('switch', 'rollback')"),
        )

    op.create_table(
        "quarantine",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("service", "version", name=op.f("pk_quarantine")),
    )
    op.create_table(
        "routers",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_create_time", sa.Double(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("admin_url", sa.Text(), nullable=False),
        sa.Column("started_ts", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_routers")),
    )
    op.create_table(
        "deployments",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("active_boot_id", sa.String(length=64), nullable=True),
        sa.Column("candidate_boot_id", sa.String(length=64), nullable=True),
        sa.Column("old_boot_id", sa.String(length=64), nullable=True),
        sa.Column("switch_ts", sa.DateTime(), nullable=True),
        sa.Column("health_fail_streak", sa.Integer(), nullable=False),
        sa.Column("health_ok_streak", sa.Integer(), nullable=False),
        sa.Column("rollback_reason", sa.Text(), nullable=True),
        sa.Column("rollback_ts", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["active_boot_id"], ["boots.boot_id"], name=op.f("fk_deployments_active_boot_id_boots")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_boot_id"],
            ["boots.boot_id"],
            name=op.f("fk_deployments_candidate_boot_id_boots"),
        ),
        sa.ForeignKeyConstraint(
            ["old_boot_id"], ["boots.boot_id"], name=op.f("fk_deployments_old_boot_id_boots")
        ),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_deployments")),
    )
    op.create_table(
        "workspaces",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=512), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("attached_ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["boot_id"], ["boots.boot_id"], name=op.f("fk_workspaces_boot_id_boots")
        ),
        sa.PrimaryKeyConstraint("service", "workspace", name=op.f("pk_workspaces")),
    )


def downgrade() -> None:

    op.drop_table("workspaces")
    op.drop_table("deployments")
    op.drop_table("routers")
    op.drop_table("quarantine")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_events_once_per_generation", sqlite_where=sa.text("event IN ('switch', 'rollback')")
        )
        batch_op.drop_index(batch_op.f("ix_events_service"))

    op.drop_table("events")
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_boots_one_active_per_service", sqlite_where=sa.text("state = 'active'")
        )
        batch_op.drop_index(batch_op.f("ix_boots_service"))

    op.drop_table("boots")
