module github.com/idsafe/keystore

go 1.24.0

require (
	github.com/go-sql-driver/mysql v1.10.1
	github.com/google/uuid v1.6.0
	github.com/jmoiron/sqlx v1.4.0
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	golang.org/x/sync v0.19.0 // indirect
)
