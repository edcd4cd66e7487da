-- keystore schema, version 3: ratelimit windows, the database's count of
-- the tokens each limit handed out in its current window. subject is the
-- key's id, or the identity's for an owner's limit; window_id is the number
-- of whole limit durations since the Unix epoch (ratelimit.go).
CREATE TABLE IF NOT EXISTS keystore_ratelimits (
  subject   VARCHAR(64)  CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
  name      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  window_id BIGINT NOT NULL,
  used      BIGINT NOT NULL,
  PRIMARY KEY (subject, name)
) ENGINE=InnoDB
