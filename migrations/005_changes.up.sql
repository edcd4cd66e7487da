-- +goose Up
-- +goose NO TRANSACTION
-- keystore schema, version 5: the change feed that keeps the verification
-- caches of every Store (WithVerifyCache) within their staleness bound
-- (feed.go). Every mutation that can change a verification's answer
-- writes one row into keystore_changes in its own transaction, naming
-- what it changed.
--
-- The rows of a shard are numbered by seq, and a transaction takes its
-- number by incrementing its shard's row here, which it holds locked until
-- it commits: the next number of a shard is taken only once the previous
-- one has committed (or rolled back and been taken again). So the numbers
-- of a shard become visible in order and without gaps, which an
-- auto-increment id does not (ids are taken at INSERT and become visible
-- at COMMIT, in any order). A transaction writes to the shard of its
-- connection (CONNECTION_ID() modulo 32), so writers that commit at once
-- seldom wait for each other; 32 is also feed.go's feedShards.
CREATE TABLE IF NOT EXISTS keystore_change_shards (
  shard SMALLINT NOT NULL,
  seq   BIGINT NOT NULL,
  PRIMARY KEY (shard)
) ENGINE=InnoDB
;
INSERT IGNORE INTO keystore_change_shards (shard, seq) VALUES (0,0),(1,0),(2,0),(3,0),(4,0),(5,0),(6,0),(7,0),(8,0),(9,0),(10,0),(11,0),(12,0),(13,0),(14,0),(15,0),(16,0),(17,0),(18,0),(19,0),(20,0),(21,0),(22,0),(23,0),(24,0),(25,0),(26,0),(27,0),(28,0),(29,0),(30,0),(31,0)
;
-- A ring of 256 rows per shard: seq goes to slot seq % 256, overwriting
-- the change 256 before it, so the table never grows past 8192 rows and
-- needs no pruning. A reader that fell more than 256 changes of a shard
-- behind sees the gap and drops its whole cache. refs is a JSON array of
-- what changed ("k:" a key id, "i:" an identity id, "w:" a workspace id,
-- "n:" every unknown key).
CREATE TABLE IF NOT EXISTS keystore_changes (
  shard SMALLINT NOT NULL,
  slot  SMALLINT NOT NULL,
  seq   BIGINT NOT NULL,
  refs  TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  PRIMARY KEY (shard, slot),
  KEY keystore_changes_seq (shard, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
;
INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (5, UTC_TIMESTAMP(6))
;
