-- +goose Up
-- +goose NO TRANSACTION
-- keystore schema, version 4: receipts of a Store made WithoutAudit. Its
-- mutations but CreateKey and ImportKey (whose key is the receipt) write
-- one row here in their own transaction, under an id chosen before it was
-- sent, so that a commit whose reply was lost can be settled by looking
-- for it (settle.go). A Store with an audit trail uses the mutation's
-- first audit event instead. The id is all there is: it
-- begins with its time (a UUIDv7), which is what Store.PruneReceipts
-- deletes by.
CREATE TABLE IF NOT EXISTS keystore_receipts (
  id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB
;
INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (4, UTC_TIMESTAMP(6))
;
