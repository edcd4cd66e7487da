package keystore

import "sync"

// identityHints remembers which identities this Store has seen, to guess
// which statement of ensureIdentity goes first: a read for an identity seen
// before, an INSERT for one never seen. It is a guess and nothing more; a
// wrong one (an identity created by another process, or deleted since) costs
// one statement. It is safe for concurrent use.
type identityHints struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// maxIdentityHints bounds the memory: when full, the hints start over.
const maxIdentityHints = 50_000

func hintKey(workspaceID, externalID string) string { return workspaceID + "\x00" + externalID }

// has reports whether the identity was seen; a nil *identityHints has seen
// nothing and learns nothing.
func (h *identityHints) has(workspaceID, externalID string) bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.seen[hintKey(workspaceID, externalID)]
	return ok
}

func (h *identityHints) add(workspaceID, externalID string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil || len(h.seen) >= maxIdentityHints {
		h.seen = make(map[string]struct{})
	}
	h.seen[hintKey(workspaceID, externalID)] = struct{}{}
}
