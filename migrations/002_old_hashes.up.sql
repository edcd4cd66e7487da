-- +goose Up
-- +goose NO TRANSACTION
-- keystore schema, version 2: the hashes a key answers to during a
-- RerollKey grace period, besides its own. A row stops counting once
-- expires_at has passed; RerollKey deletes its key's expired rows.
CREATE TABLE IF NOT EXISTS keystore_old_hashes (
  hash       BINARY(32) NOT NULL,
  key_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  expires_at DATETIME(6) NOT NULL,
  PRIMARY KEY (hash),
  KEY keystore_old_hashes_key (key_id)
) ENGINE=InnoDB
;
INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (2, UTC_TIMESTAMP(6))
;
