"""The task store as it was before migrations existed (``Base.metadata.create_all``): databases created then are
stamped at this revision, not re-created.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hallo2_tasks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("status_message", sa.String(500), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("use_cache", sa.Boolean(), nullable=False),
        sa.Column("guidance_scale", sa.Float(), nullable=False),
        sa.Column("inference_steps", sa.Integer(), nullable=False),
        sa.Column("image_path", sa.String(1000), nullable=False),
        sa.Column("audio_path", sa.String(1000), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )
    op.create_index("ix_hallo2_tasks_task_id", "hallo2_tasks", ["task_id"], unique=True)
    op.create_index("ix_hallo2_tasks_status", "hallo2_tasks", ["status"])
    op.create_index("ix_hallo2_tasks_created_at", "hallo2_tasks", ["created_at"])
    op.create_table(
        "hallo2_config",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hallo2_config")
    op.drop_index("ix_hallo2_tasks_created_at", "hallo2_tasks")
    op.drop_index("ix_hallo2_tasks_status", "hallo2_tasks")
    op.drop_index("ix_hallo2_tasks_task_id", "hallo2_tasks")
    op.drop_table("hallo2_tasks")
