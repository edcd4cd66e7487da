-- +goose Up
-- +goose NO TRANSACTION
-- keystore schema, version 1.
--
-- The files of this directory are the schema for Store.Migrate and, through
-- keystore.Migrations(), for goose and golang-migrate (see migrate.go and
-- docs/migrations.md), so each keeps to what all three read:
--   - named NNN_name.up.sql; they only go up;
--   - the two goose annotations above, first, and no other line with goose's
--     annotation marker;
--   - statements separated by a line holding only ";" (Migrate runs them one
--     at a time; goose ends a statement at a line ending in ";"; golang-migrate
--     sends the whole file), the last one followed by such a line too;
--   - every statement idempotent, so that a file cut short can run again;
--   - the last statement records the file's own version in
--     keystore_schema_migrations, which this file creates first: after any
--     tool has run the files, Migrate finds them all applied and does
--     nothing (migrate_test.go checks this of every file).
--
-- Ids and names use binary collations: "User1" and "user1" are two identities.
-- A live row has live = 1; a deleted row has live = NULL. NULLs never collide
-- in a unique index, so a name can be deleted and created again any number of
-- times while only one live row per name can exist.

CREATE TABLE IF NOT EXISTS keystore_schema_migrations (
  version    INT NOT NULL PRIMARY KEY,
  applied_at DATETIME(6) NOT NULL
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS keystore_identities (
  id           VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  workspace_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  external_id  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  live         TINYINT NULL DEFAULT 1,
  meta         LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  ratelimits   LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, -- JSON, as on keys
  created_at   DATETIME(6) NOT NULL,
  updated_at   DATETIME(6) NOT NULL,
  deleted_at   DATETIME(6) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY keystore_identities_live (workspace_id, external_id, live),
  -- ListIdentities: live rows of a workspace in id order, deleted ones skipped
  KEY keystore_identities_list (workspace_id, live, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
CREATE TABLE IF NOT EXISTS keystore_keys (
  id              VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  workspace_id    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  key_space_id    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  hash            BINARY(32) NOT NULL,
  start           VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  name            VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  identity_id     VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
  -- Copies of the owner's external id, meta and ratelimits while it is live
  -- (NULL external id: no live owner), so that reads of a key need no join.
  -- Every transaction that links a key or changes or deletes an identity
  -- rewrites them (identity.go, identities.go).
  owner_external_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  owner_meta      LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  owner_ratelimits LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  meta            LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  expires         DATETIME(6) NULL,
  enabled         TINYINT NOT NULL,
  remaining       BIGINT NULL,
  refill_interval VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL,
  refill_amount   BIGINT NULL,
  refill_day      TINYINT NULL,
  refilled_at     DATETIME(6) NULL,
  -- The sets a verification returns, kept on the row so that VerifyKey reads
  -- one row: JSON arrays of permission slugs (direct and through roles),
  -- role names, and ratelimits. keys.go keeps them in step with the link
  -- tables, in the same transactions.
  permissions     LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  roles           LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  ratelimits      LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  created_at      DATETIME(6) NOT NULL,
  updated_at      DATETIME(6) NOT NULL,
  deleted_at      DATETIME(6) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY keystore_keys_hash (hash),
  -- ListKeys pages live keys (deleted_at IS NULL) in id order without
  -- reading the deleted ones; DeleteIdentity unlinks by identity_id.
  KEY keystore_keys_space (workspace_id, key_space_id, deleted_at, id),
  KEY keystore_keys_identity (identity_id, deleted_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
CREATE TABLE IF NOT EXISTS keystore_permissions (
  id           VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  workspace_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  slug         VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  created_at   DATETIME(6) NOT NULL,
  -- The slug is the primary key, so that an INSERT IGNORE of an existing
  -- slug stops at the clustered index. With the id as primary key it first
  -- inserted a clustered record and removed it again on finding the slug
  -- in the secondary index; MySQL then leaves a gap lock where that record
  -- was, at the end of the index (ids grow), and two such transactions
  -- inserting the next slug of their list deadlocked there (MySQL 9.7:
  -- 0.5 retries per call in a burst of 64 creators of one new identity
  -- with new permissions; none since, and none on MariaDB either way).
  PRIMARY KEY (workspace_id, slug),
  UNIQUE KEY keystore_permissions_id (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
CREATE TABLE IF NOT EXISTS keystore_roles (
  id           VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  workspace_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  name         VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  created_at   DATETIME(6) NOT NULL,
  -- The name is the primary key, so every lock on a role is taken through
  -- one index (roles.go), and re-creating a deleted name reuses its
  -- clustered record under a record lock instead of next-key locks on a
  -- secondary index's delete-marked entries.
  PRIMARY KEY (workspace_id, name),
  UNIQUE KEY keystore_roles_id (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
CREATE TABLE IF NOT EXISTS keystore_key_permissions (
  key_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  permission_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  PRIMARY KEY (key_id, permission_id),
  KEY keystore_key_permissions_permission (permission_id)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS keystore_key_roles (
  key_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  role_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  PRIMARY KEY (key_id, role_id),
  KEY keystore_key_roles_role (role_id)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS keystore_role_permissions (
  role_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  permission_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  PRIMARY KEY (role_id, permission_id),
  KEY keystore_role_permissions_permission (permission_id)
) ENGINE=InnoDB
;
-- One row per mutation, written in the mutation's own transaction.
CREATE TABLE IF NOT EXISTS keystore_audit_events (
  id           VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  workspace_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  actor        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  event        VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  key_id       VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NULL,
  identity_id  VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NULL,
  role_id      VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NULL,
  created_at   DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY keystore_audit_events_workspace (workspace_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (1, UTC_TIMESTAMP(6))
;
