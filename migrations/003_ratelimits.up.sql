-- +goose Up
-- +goose NO TRANSACTION
-- keystore schema, version 3: ratelimit windows, the database's count of
-- the tokens each limit handed out in its current window. subject is the
-- key's id, or the identity's for an owner's limit; window_start is the
-- start of the window in milliseconds since the Unix epoch, a multiple of
-- duration_ms, the limit's Duration when the window opened (ratelimit.go).
CREATE TABLE IF NOT EXISTS keystore_ratelimits (
  subject      VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  name         VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  window_start BIGINT NOT NULL,
  duration_ms  BIGINT NOT NULL,
  used         BIGINT NOT NULL,
  PRIMARY KEY (subject, name)
) ENGINE=InnoDB
;
INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (3, UTC_TIMESTAMP(6))
;
