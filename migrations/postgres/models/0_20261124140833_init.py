from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "workflows" (
    "id" VARCHAR(36) NOT NULL PRIMARY KEY,
    "owner_id" VARCHAR(64) NOT NULL,
    "status" VARCHAR(16) NOT NULL DEFAULT 'running',
    "round_number" INT NOT NULL DEFAULT 1,
    "title" VARCHAR(120) NOT NULL DEFAULT '',
    "created_at" DOUBLE PRECISION NOT NULL,
    "updated_at" DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_workflows_owner_i_2e1963" ON "workflows" ("owner_id", "updated_at");
CREATE TABLE IF NOT EXISTS "logs" (
    "id" VARCHAR(36) NOT NULL PRIMARY KEY,
    "message" TEXT NOT NULL,
    "type" VARCHAR(32) NOT NULL DEFAULT 'step',
    "status" VARCHAR(16) NOT NULL DEFAULT 'done',
    "round_number" INT NOT NULL,
    "created_at" DOUBLE PRECISION NOT NULL,
    "workflow_id" VARCHAR(36) NOT NULL REFERENCES "workflows" ("id") ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "idx_logs_workflo_66052b" ON "logs" ("workflow_id", "created_at");
CREATE TABLE IF NOT EXISTS "messages" (
    "id" VARCHAR(36) NOT NULL PRIMARY KEY,
    "role" VARCHAR(16) NOT NULL,
    "content" TEXT NOT NULL,
    "round_number" INT NOT NULL,
    "created_at" DOUBLE PRECISION NOT NULL,
    "workflow_id" VARCHAR(36) NOT NULL REFERENCES "workflows" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_messages_workflo_8647d2" UNIQUE ("workflow_id", "round_number", "role")
);
CREATE INDEX IF NOT EXISTS "idx_messages_workflo_2d9d09" ON "messages" ("workflow_id", "created_at");
CREATE TABLE IF NOT EXISTS "aerich" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "version" VARCHAR(255) NOT NULL,
    "app" VARCHAR(100) NOT NULL,
    "content" JSONB NOT NULL
);"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        """


MODELS_STATE = (
    "eJztmvFvojAUx/8Vw0+3ZLcoc265XC5R5+68Ob247W7JYkiFimTQulLOmWX/+7UVpCAY2d"
    "SDhF/mfH2vtJ++8r4FXxUHG9B2T3rYVL5UXhUEHMj+kc3HFQXMZqGRGygY28LPxqYwgLFL"
    "CdAps02A7UJmMqCrE2tGLYyYFXm2zY1YZ44WMkOTh6xnD2oUm5BOIWENjyNmtpABX6DLvz"
    "4qc0yeJjae80vpBAIKDQ1QZcQdZ0/axIK2ERm/ZXBXYdfoYiZs7SkgV8KTD2Ss6dj2HBR6"
    "zxZ0itHKnY2TW02IIOEXlKbGR+4TCEzLWTADJR5cDd8IDQacAM/mgJSvEw/pnEvFx4zgXL"
    "OMb0oGajpGnLiFqCsm7oAXzYbIpFP29bTxtpxiCGDpxa/+uzls/2gOP502jvgFMVu25Vr2"
    "/RZVNL2JLgAFy07EQkj5AV0XmHAd8h18ocmQpZDdkA4MIeow9QLWAcD3Ud1A8a7zcMcH7b"
    "jusy3T+3TTfBBgnYXf0hv0vwfuEu12b9ASlEOqAkiGvA38D8eT9Q1nu8tTdZs8VdPzVD2K"
    "EXQpoJ6bhWEYcUCKBkZwZxRr2+z2WvpurzXiFAn2kKEhzxlDss6yi1J2eDwsBpSNPp/bnA"
    "2JfXxWa/Xz+sVpo37BXMRYVpbzDYS7/bsYPqlCrcG7sjFIwRcNi8Gb8Li95WNYkajlwBP+"
    "5yPVaAOty8F9q9ep/Bp22t3b7qAfuVMuG7mJGSwqJj7sNHsxvoEa0LJV+VhYUYrQPko710"
    "2Tp8TKLkutWOpiAi0TXcOF4NtlowRITypAvqz5I3WVP65vQX4E1lCrETBfacp42rBpssnB"
    "ZXK2m7ft5mVHEUDHQH+aA2JoEbK8Bas4Zln5rjc5qhO3AMSEk+HPhI/bB3zjS6oE5X4Tqq"
    "109e5Lsj0o+KhkjxcGgtn1R6XKz8OtYJPKF+uUgXDgX8xb6+51FLschShBBaSfkqSQolA8"
    "9CmpVKelOi3VaV6ys1SnpTpNVqcrwAnyVIafrk+DyR3iETOesxTwKXozoxSf/1t8yguyLW"
    "U5pph30EZ9C66NeipX3lTIR6LEQ4hjyq+aL5zurOVHdFKLZjtKrgIOmIK7yz21uk3yqdX0"
    "7ONtpW4/pG6Xin4WvtGwkm+E75qST1ei4UIEvymILkHLj7q6HkIbiLmlSnv/Zwv5q/Vpqj"
    "6SiPJT2fczkB4AF4jDPs8jTUgsfaoknEb8luNNZxEQ+uzzIJLpuJGqORIVcILS8A8OHzts"
    "5OHxVvox4i8krr9RttUeUkgxDxHq2dkW+oN5peoP0Ratj3xrZIDouxcTYK26lYCrbhBw1X"
    "UBl/Y24OftoJ/1bcA9YhN8NCydHldsy6WjfGLdQJHPevO7gfhrAE4Bu9QkohfRQSubyNh9"
    "eXn7BzjiRxg="
)
