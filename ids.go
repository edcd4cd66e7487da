package keystore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"

	"github.com/google/uuid"
)

// newID returns prefix + "_" + a UUIDv7 in hex: 74 random bits plus a
// millisecond timestamp, so ids never collide in practice and are inserted
// in index order.
func newID(prefix string) string {
	u := uuid.Must(uuid.NewV7())
	return prefix + "_" + hex.EncodeToString(u[:])
}

const defaultByteLength = 16

// newSecret returns a new key: prefix + "_" + n random bytes from crypto/rand,
// base64url-encoded, with the SHA-256 hash the store keeps and the short
// non-secret start shown to users (the prefix and 4 characters, 24 bits).
func newSecret(prefix string, n int) (plaintext, start string, hash []byte) {
	if n == 0 {
		n = defaultByteLength
	}
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand since Go 1.24 crashes instead)
	body := base64.RawURLEncoding.EncodeToString(b)
	var sb strings.Builder
	if prefix != "" {
		sb.WriteString(prefix)
		sb.WriteByte('_')
	}
	startLen := sb.Len() + 4
	sb.WriteString(body)
	plaintext = sb.String()
	return plaintext, plaintext[:startLen], hashKey(plaintext)
}

func hashKey(plaintext string) []byte {
	h := sha256.Sum256([]byte(plaintext))
	return h[:]
}

// placeholders returns "?, ?, ..., ?" with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// rows returns n copies of the tuple "(?, ..., ?)" of width marks, joined by
// commas, for multi-row VALUES.
func rows(n, width int) string {
	tuple := "(" + placeholders(width) + ")"
	return strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ")
}
